//! One tick as a state machine with no I/O: the driver (the component
//! adapter, or a test) asks [`Tick::poll`] what to do, does it, and hands
//! the result back with [`Tick::handle`], together with the current time.
//!
//! Per enabled service, in order: load the checkpoint, fetch one page, send
//! it to Devo in batches, and only when every batch was accepted store the
//! new checkpoint. A failure at any step ends that service's part of the
//! tick with the checkpoint where it was (so the next tick repeats the page)
//! and the next service carries on.

use crate::checkpoint::{Checkpoint, SCHEMA_VERSION};
use crate::config::{Config, DEFAULT_LOOKBACK};
use crate::devo::{self, Batch};
use crate::error::CollectorError;
use crate::http::{HttpFailure, HttpRequest, HttpResponse};
use crate::onepassword::{self, PageStart};
use crate::report::{Outcome, ServiceReport, TickReport};
use crate::service::Service;
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::VecDeque;

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Read `key` from the key-value bucket; answer with [`Input::Loaded`].
    Load { key: String },
    /// Perform the request; answer with [`Input::Response`].
    Send { request: HttpRequest },
    /// Write `value` under `key`; answer with [`Input::Stored`].
    Store { key: String, value: Vec<u8> },
    /// The tick is over.
    Done(TickReport),
}

/// The result of the last [`Action`]. Store errors are the host's
/// description of the failure and must not contain secrets.
#[derive(Debug)]
pub enum Input {
    Loaded(Result<Option<Vec<u8>>, String>),
    Response(Result<HttpResponse, HttpFailure>),
    Stored(Result<(), String>),
}

pub struct Tick {
    config: Config,
    started_at: DateTime<Utc>,
    now: DateTime<Utc>,
    queue: VecDeque<Service>,
    run: Option<ServiceRun>,
    reports: Vec<ServiceReport>,
}

struct ServiceRun {
    service: Service,
    started_at: DateTime<Utc>,
    phase: Phase,
    previous: Option<Checkpoint>,
    fetched: u32,
    sent: u32,
    has_more: bool,
}

enum Phase {
    Load,
    AwaitLoad,
    Fetch(PageStart),
    AwaitPage,
    /// Batches still to send, and the checkpoint to store once all are taken.
    Deliver {
        batches: VecDeque<Batch>,
        next: Checkpoint,
    },
    AwaitDevo {
        batch_events: u32,
        batches: VecDeque<Batch>,
        next: Checkpoint,
    },
    Store(Checkpoint),
    AwaitStore {
        next: Checkpoint,
    },
    Finished {
        outcome: Outcome,
        error: Option<CollectorError>,
        checkpoint: Option<Checkpoint>,
    },
}

impl Tick {
    pub fn new(config: Config, now: DateTime<Utc>) -> Tick {
        Tick {
            queue: config.services.iter().copied().collect(),
            config,
            started_at: now,
            now,
            run: None,
            reports: Vec::new(),
        }
    }

    /// The next thing to do. Every action but `Done` must be answered with
    /// [`Tick::handle`] before `poll` is called again.
    pub fn poll(&mut self) -> Action {
        loop {
            let Some(run) = self.run.as_mut() else {
                match self.queue.pop_front() {
                    Some(service) => {
                        self.run = Some(ServiceRun {
                            service,
                            started_at: self.now,
                            phase: Phase::Load,
                            previous: None,
                            fetched: 0,
                            sent: 0,
                            has_more: false,
                        });
                        continue;
                    }
                    None => return Action::Done(self.report()),
                }
            };
            let service = run.service;
            match std::mem::replace(&mut run.phase, Phase::AwaitLoad) {
                Phase::Load => {
                    run.phase = Phase::AwaitLoad;
                    return Action::Load {
                        key: Checkpoint::key(service),
                    };
                }
                Phase::Fetch(start) => {
                    run.phase = Phase::AwaitPage;
                    return Action::Send {
                        request: onepassword::page_request(&self.config, service, &start),
                    };
                }
                Phase::Deliver { mut batches, next } => match batches.pop_front() {
                    Some(batch) => {
                        run.phase = Phase::AwaitDevo {
                            batch_events: batch.events,
                            batches,
                            next,
                        };
                        return Action::Send {
                            request: devo::stream_request(&self.config, service, batch.body),
                        };
                    }
                    None => run.phase = Phase::Store(next),
                },
                Phase::Store(next) => {
                    let value = next.encode();
                    run.phase = Phase::AwaitStore { next };
                    return Action::Store {
                        key: Checkpoint::key(service),
                        value,
                    };
                }
                Phase::Finished {
                    outcome,
                    error,
                    checkpoint,
                } => {
                    let checkpoint = checkpoint.or_else(|| run.previous.clone());
                    let elapsed = elapsed_ms(run.started_at, self.now);
                    self.reports.push(ServiceReport {
                        service: service.name().to_string(),
                        outcome,
                        fetched: run.fetched,
                        sent: run.sent,
                        has_more: run.has_more,
                        checkpoint: checkpoint.as_ref().and_then(|c| c.newest_event.clone()),
                        total_sent: checkpoint.as_ref().map_or(0, |c| c.total_sent),
                        elapsed_ms: elapsed,
                        error,
                    });
                    self.run = None;
                }
                awaiting => panic!("Tick::poll called while {} awaits input", awaiting.name()),
            }
        }
    }

    /// Feeds the result of the last action, with the time it arrived.
    pub fn handle(&mut self, input: Input, now: DateTime<Utc>) {
        self.now = now;
        let config = &self.config;
        let run = self
            .run
            .as_mut()
            .expect("Tick::handle called with no action outstanding");
        let service = run.service;
        let phase = std::mem::replace(&mut run.phase, Phase::AwaitLoad);
        run.phase = match (phase, input) {
            (Phase::AwaitLoad, Input::Loaded(Err(detail))) => {
                failed(CollectorError::persistence("get", &detail))
            }
            (Phase::AwaitLoad, Input::Loaded(Ok(stored))) => {
                match stored
                    .map(|bytes| Checkpoint::decode(service, &bytes))
                    .transpose()
                {
                    Err(e) => failed(e),
                    Ok(previous) => {
                        run.previous = previous;
                        Phase::Fetch(page_start(config, run.previous.as_ref(), now))
                    }
                }
            }
            (Phase::AwaitPage, Input::Response(Err(failure))) => {
                failed(onepassword::transport_error(service, &failure))
            }
            (Phase::AwaitPage, Input::Response(Ok(response))) => {
                match onepassword::parse_page(service, &response) {
                    Err(e) => failed(e),
                    Ok(page) => {
                        run.fetched = page.items.len() as u32;
                        run.has_more = page.has_more;
                        let next = next_checkpoint(config, run.previous.as_ref(), &page, now);
                        if page.items.is_empty() {
                            if run
                                .previous
                                .as_ref()
                                .is_some_and(|p| p.cursor == next.cursor)
                            {
                                Phase::Finished {
                                    outcome: Outcome::Idle,
                                    error: None,
                                    checkpoint: None,
                                }
                            } else {
                                Phase::Store(next)
                            }
                        } else {
                            let lines: Vec<_> = page
                                .items
                                .iter()
                                .map(|item| devo::event_line(item.get()))
                                .collect();
                            let batches = devo::batches(
                                lines.iter().map(|l| l.as_ref()),
                                config.devo_max_batch_bytes,
                            );
                            Phase::Deliver {
                                batches: batches.into(),
                                next,
                            }
                        }
                    }
                }
            }
            (Phase::AwaitDevo { .. }, Input::Response(Err(failure))) => {
                failed(devo::transport_error(service, &failure))
            }
            (
                Phase::AwaitDevo {
                    batch_events,
                    batches,
                    next,
                },
                Input::Response(Ok(response)),
            ) => match devo::check_response(service, config.tag(service), &response) {
                Err(e) => failed(e),
                Ok(()) => {
                    run.sent += batch_events;
                    Phase::Deliver { batches, next }
                }
            },
            (Phase::AwaitStore { .. }, Input::Stored(Err(detail))) => {
                let mut e = CollectorError::persistence("set", &detail);
                if run.sent > 0 {
                    e.message.push_str(
                        "; Devo already took this page, so the next tick sends it again (a duplicate, not a loss)",
                    );
                }
                failed(e)
            }
            (Phase::AwaitStore { next }, Input::Stored(Ok(()))) => {
                let outcome = if run.sent > 0 {
                    Outcome::Delivered
                } else {
                    Outcome::Idle
                };
                Phase::Finished {
                    outcome,
                    error: None,
                    checkpoint: Some(next),
                }
            }
            (phase, input) => panic!(
                "Tick::handle got {} while {} was expected",
                input.name(),
                phase.name()
            ),
        };
    }

    fn report(&self) -> TickReport {
        TickReport {
            started_at: rfc3339(self.started_at),
            elapsed_ms: elapsed_ms(self.started_at, self.now),
            services: self.reports.clone(),
        }
    }
}

fn failed(error: CollectorError) -> Phase {
    Phase::Finished {
        outcome: Outcome::Failed,
        error: Some(error),
        checkpoint: None,
    }
}

/// The configured start as stored in a checkpoint, to notice when it changes.
fn start_value(config: &Config) -> Option<String> {
    config.start_time.map(rfc3339)
}

/// Continue from the stored cursor, unless there is none or the configured
/// `start_time_value` changed since it was stored (Devo's way of asking for a
/// re-ingest): then a reset cursor from the configured start.
fn page_start(config: &Config, previous: Option<&Checkpoint>, now: DateTime<Utc>) -> PageStart {
    match previous {
        Some(cp) if cp.start_time_value == start_value(config) => {
            PageStart::Cursor(cp.cursor.clone())
        }
        _ => PageStart::From(config.start_time.unwrap_or(now - DEFAULT_LOOKBACK)),
    }
}

fn next_checkpoint(
    config: &Config,
    previous: Option<&Checkpoint>,
    page: &onepassword::Page,
    now: DateTime<Utc>,
) -> Checkpoint {
    let newest_in_page = page
        .items
        .iter()
        .filter_map(|item| onepassword::event_time(item))
        .max_by_key(|(t, _)| *t);
    let previous_newest = previous.and_then(|p| p.newest_event.clone());
    let newest_event = match (newest_in_page, previous_newest) {
        (Some((t, raw)), Some(old)) => {
            let old_t = DateTime::parse_from_rfc3339(&old)
                .ok()
                .map(|o| o.with_timezone(&Utc));
            if old_t.is_some_and(|o| o > t) {
                Some(old)
            } else {
                Some(raw)
            }
        }
        (Some((_, raw)), None) => Some(raw),
        (None, old) => old,
    };
    Checkpoint {
        version: SCHEMA_VERSION,
        cursor: page.cursor.clone(),
        start_time_value: start_value(config),
        newest_event,
        total_sent: previous.map_or(0, |p| p.total_sent) + page.items.len() as u64,
        updated_at: rfc3339(now),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn elapsed_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_milliseconds().max(0) as u64
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::AwaitLoad => "a checkpoint load",
            Phase::Fetch(_) => "fetch",
            Phase::AwaitPage => "a 1Password response",
            Phase::Deliver { .. } => "deliver",
            Phase::AwaitDevo { .. } => "a Devo response",
            Phase::Store(_) => "store",
            Phase::AwaitStore { .. } => "a checkpoint store",
            Phase::Finished { .. } => "finished",
        }
    }
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Input::Loaded(_) => "a load result",
            Input::Response(_) => "an HTTP response",
            Input::Stored(_) => "a store result",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load, minimal};
    use crate::error::{DEVO_REJECTED, DEVO_UNREACHABLE, ONEPASSWORD_UNREACHABLE, PERSISTENCE};
    use std::collections::HashMap;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ok(status: u16, body: &str) -> Result<HttpResponse, HttpFailure> {
        Ok(HttpResponse {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        })
    }

    /// Plays the driver: an in-memory store and an answer function for requests.
    struct World {
        store: HashMap<String, Vec<u8>>,
        fail_get: bool,
        fail_set: bool,
        requests: Vec<HttpRequest>,
    }

    impl World {
        fn new() -> World {
            World {
                store: HashMap::new(),
                fail_get: false,
                fail_set: false,
                requests: vec![],
            }
        }

        fn run(
            &mut self,
            config: Config,
            now: DateTime<Utc>,
            mut answer: impl FnMut(&HttpRequest) -> Result<HttpResponse, HttpFailure>,
        ) -> TickReport {
            let mut tick = Tick::new(config, now);
            loop {
                let input = match tick.poll() {
                    Action::Done(report) => return report,
                    Action::Load { key } => Input::Loaded(if self.fail_get {
                        Err("disk on fire".into())
                    } else {
                        Ok(self.store.get(&key).cloned())
                    }),
                    Action::Store { key, value } => Input::Stored(if self.fail_set {
                        Err("read-only".into())
                    } else {
                        self.store.insert(key, value);
                        Ok(())
                    }),
                    Action::Send { request } => {
                        let r = answer(&request);
                        self.requests.push(request);
                        Input::Response(r)
                    }
                };
                tick.handle(input, now + chrono::TimeDelta::milliseconds(5));
            }
        }

        fn checkpoint(&self, s: Service) -> Option<Checkpoint> {
            self.store
                .get(&Checkpoint::key(s))
                .map(|b| Checkpoint::decode(s, b).unwrap())
        }
    }

    fn audit_only() -> Config {
        let mut m = minimal();
        m.insert("services", "audit".into());
        load(&m).unwrap()
    }

    const PAGE: &str = r#"{"items":[{"uuid":"A","timestamp":"2026-01-01T00:00:01Z"},{"uuid":"B","timestamp":"2026-01-01T00:00:03-01:00"},{"uuid":"C","timestamp":"2026-01-01T00:00:02Z"}],"cursor":"CUR1","has_more":true}"#;

    fn is_devo(r: &HttpRequest) -> bool {
        r.path.starts_with("/stream/")
    }

    #[test]
    fn first_tick_starts_24h_back_delivers_then_checkpoints() {
        let mut w = World::new();
        let now = t("2026-01-02T12:00:00Z");
        let report = w.run(audit_only(), now, |r| {
            if is_devo(r) {
                ok(200, "")
            } else {
                ok(200, PAGE)
            }
        });
        let s = &report.services[0];
        assert_eq!(
            (s.outcome, s.fetched, s.sent, s.has_more),
            (Outcome::Delivered, 3, 3, true)
        );
        // the newest event by instant, not by position or string order
        assert_eq!(s.checkpoint.as_deref(), Some("2026-01-01T00:00:03-01:00"));
        assert_eq!(s.total_sent, 3);
        assert_eq!(s.elapsed_ms, 5);
        let first: serde_json::Value = serde_json::from_slice(&w.requests[0].body).unwrap();
        assert_eq!(first["start_time"], "2026-01-01T12:00:00Z");
        assert_eq!(first["limit"], 1000);
        // Devo got the events as served, one per line, in order
        assert_eq!(
            String::from_utf8(w.requests[1].body.clone()).unwrap(),
            "{\"uuid\":\"A\",\"timestamp\":\"2026-01-01T00:00:01Z\"}\n{\"uuid\":\"B\",\"timestamp\":\"2026-01-01T00:00:03-01:00\"}\n{\"uuid\":\"C\",\"timestamp\":\"2026-01-01T00:00:02Z\"}\n"
        );
        let cp = w.checkpoint(Service::Audit).unwrap();
        assert_eq!((cp.cursor.as_str(), cp.total_sent), ("CUR1", 3));
        assert_eq!(cp.start_time_value, None);
    }

    #[test]
    fn later_ticks_continue_from_the_stored_cursor_and_count_up() {
        let mut w = World::new();
        let now = t("2026-01-02T12:00:00Z");
        w.run(audit_only(), now, |r| {
            if is_devo(r) {
                ok(200, "")
            } else {
                ok(200, PAGE)
            }
        });
        let page2 = r#"{"items":[{"uuid":"D","timestamp":"2026-01-01T00:00:00Z"}],"cursor":"CUR2","has_more":false}"#;
        let report = w.run(audit_only(), now, |r| {
            if is_devo(r) {
                ok(200, "")
            } else {
                ok(200, page2)
            }
        });
        let body: serde_json::Value = serde_json::from_slice(&w.requests[2].body).unwrap();
        assert_eq!(body, serde_json::json!({"cursor": "CUR1"}));
        let s = &report.services[0];
        assert_eq!((s.sent, s.total_sent, s.has_more), (1, 4, false));
        // an older event does not move the newest-event mark backwards
        assert_eq!(s.checkpoint.as_deref(), Some("2026-01-01T00:00:03-01:00"));
        assert_eq!(w.checkpoint(Service::Audit).unwrap().cursor, "CUR2");
    }

    #[test]
    fn an_empty_page_sends_nothing_and_only_moves_the_cursor() {
        let mut w = World::new();
        let now = t("2026-01-02T12:00:00Z");
        let empty = r#"{"items":[],"cursor":"E1","has_more":false}"#;
        let report = w.run(audit_only(), now, |_| ok(200, empty));
        assert_eq!(report.services[0].outcome, Outcome::Idle);
        assert_eq!(w.requests.len(), 1, "no Devo request for an empty page");
        assert_eq!(w.checkpoint(Service::Audit).unwrap().cursor, "E1");
        // same cursor again: nothing to write
        let before = w.store.clone();
        let report = w.run(audit_only(), now, |_| ok(200, empty));
        assert_eq!(report.services[0].outcome, Outcome::Idle);
        assert_eq!(w.store, before);
    }

    #[test]
    fn devo_failure_keeps_the_checkpoint_and_the_next_tick_repeats_the_page() {
        let mut w = World::new();
        let now = t("2026-01-02T12:00:00Z");
        let report = w.run(audit_only(), now, |r| {
            if is_devo(r) {
                ok(503, "")
            } else {
                ok(200, PAGE)
            }
        });
        let s = &report.services[0];
        assert_eq!((s.outcome, s.sent), (Outcome::Failed, 0));
        assert_eq!(s.error.as_ref().unwrap().id, DEVO_REJECTED);
        assert!(w.checkpoint(Service::Audit).is_none());
        let report = w.run(audit_only(), now, |r| {
            if is_devo(r) {
                Err(HttpFailure::Transport("refused".into()))
            } else {
                ok(200, PAGE)
            }
        });
        assert_eq!(
            report.services[0].error.as_ref().unwrap().id,
            DEVO_UNREACHABLE
        );
        // both retries asked for the same reset page
        assert_eq!(w.requests[0].body, w.requests[2].body);
        assert!(w.checkpoint(Service::Audit).is_none());
    }

    #[test]
    fn services_are_independent() {
        let mut w = World::new();
        let now = t("2026-01-02T12:00:00Z");
        let report = w.run(load(&minimal()).unwrap(), now, |r| {
            if r.path.contains("itemusages") {
                Err(HttpFailure::Timeout)
            } else if is_devo(r) {
                ok(200, "")
            } else {
                ok(200, PAGE)
            }
        });
        let outcomes: Vec<_> = report
            .services
            .iter()
            .map(|s| (s.service.as_str(), s.outcome))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                ("audit", Outcome::Delivered),
                ("item_usage", Outcome::Failed),
                ("sign_in_attempts", Outcome::Delivered)
            ]
        );
        assert_eq!(
            report.services[1].error.as_ref().unwrap().id,
            ONEPASSWORD_UNREACHABLE
        );
        assert!(!report.ok());
        assert!(w.checkpoint(Service::ItemUsage).is_none());
        assert!(w.checkpoint(Service::SignInAttempts).is_some());
        // each service's events went to its own tag
        let tags: Vec<_> = w
            .requests
            .iter()
            .filter(|r| is_devo(r))
            .map(|r| r.path.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(
            tags,
            vec![
                "auth.agilebits.onepassword.audit",
                "auth.agilebits.onepassword.signinattempt"
            ]
        );
    }

    #[test]
    fn store_failures_send_nothing_or_say_a_duplicate_follows() {
        let mut w = World::new();
        w.fail_get = true;
        let now = t("2026-01-02T12:00:00Z");
        let report = w.run(audit_only(), now, |_| {
            panic!("no request may be made without a checkpoint")
        });
        assert_eq!(report.services[0].error.as_ref().unwrap().id, PERSISTENCE);

        let mut w = World::new();
        w.fail_set = true;
        let report = w.run(audit_only(), now, |r| {
            if is_devo(r) {
                ok(200, "")
            } else {
                ok(200, PAGE)
            }
        });
        let e = report.services[0].error.as_ref().unwrap();
        assert_eq!(e.id, PERSISTENCE);
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }

    #[test]
    fn a_corrupt_checkpoint_stops_that_service_without_fetching() {
        let mut w = World::new();
        w.store
            .insert(Checkpoint::key(Service::Audit), b"garbage".to_vec());
        let report = w.run(audit_only(), t("2026-01-02T12:00:00Z"), |_| {
            panic!("must not fetch")
        });
        assert_eq!(
            report.services[0].error.as_ref().unwrap().id,
            crate::error::CHECKPOINT_UNREADABLE
        );
    }

    #[test]
    fn a_changed_start_time_value_resets_once() {
        let mut w = World::new();
        let now = t("2026-01-02T12:00:00Z");
        w.run(audit_only(), now, |r| {
            if is_devo(r) {
                ok(200, "")
            } else {
                ok(200, PAGE)
            }
        });
        let mut m = minimal();
        m.insert("services", "audit".into());
        m.insert("start_time_value", "2025-12-31T00:00:00Z".into());
        let changed = load(&m).unwrap();
        w.run(changed.clone(), now, |r| {
            if is_devo(r) {
                ok(200, "")
            } else {
                ok(200, PAGE)
            }
        });
        let reset: serde_json::Value = serde_json::from_slice(&w.requests[2].body).unwrap();
        assert_eq!(reset["start_time"], "2025-12-31T00:00:00Z");
        assert_eq!(
            w.checkpoint(Service::Audit)
                .unwrap()
                .start_time_value
                .as_deref(),
            Some("2025-12-31T00:00:00Z")
        );
        w.run(changed, now, |r| {
            if is_devo(r) {
                ok(200, "")
            } else {
                ok(200, PAGE)
            }
        });
        let next: serde_json::Value = serde_json::from_slice(&w.requests[4].body).unwrap();
        assert_eq!(
            next,
            serde_json::json!({"cursor": "CUR1"}),
            "unchanged config never resets"
        );
    }

    #[test]
    fn a_large_page_is_split_into_batches_and_counts_only_accepted_ones() {
        let mut config = audit_only();
        config.devo_max_batch_bytes = 1000;
        let big = "x".repeat(config.devo_max_batch_bytes / 2);
        let items: Vec<String> = (0..3)
            .map(|i| {
                format!(r#"{{"uuid":"U{i}","timestamp":"2026-01-01T00:00:0{i}Z","pad":"{big}"}}"#)
            })
            .collect();
        let page = format!(
            r#"{{"items":[{}],"cursor":"C","has_more":false}}"#,
            items.join(",")
        );
        let mut w = World::new();
        let mut devo_calls = 0;
        let report = w.run(config, t("2026-01-02T12:00:00Z"), |r| {
            if is_devo(r) {
                devo_calls += 1;
                ok(if devo_calls == 1 { 200 } else { 413 }, "")
            } else {
                ok(200, &page)
            }
        });
        let s = &report.services[0];
        assert_eq!(devo_calls, 2, "second batch refused, third never sent");
        assert_eq!((s.fetched, s.sent, s.outcome), (3, 1, Outcome::Failed));
        assert!(w.checkpoint(Service::Audit).is_none());
    }
}
