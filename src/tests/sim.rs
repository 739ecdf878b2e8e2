//! A simulated world for the tick state machine's tests: an in-memory
//! key-value store with compare-and-swap (honest, or with the wrong answers
//! Spin's Redis store gives, [`SwapAnswers`]), a 1Password that pages through event lists by cursor, a Devo
//! that records what it takes, a virtual clock, and faults injected by script
//! or at random.

use crate::config::Config;
use crate::http::{HttpFailure, HttpRequest, HttpResponse};
use crate::report::TickReport;
use crate::service::Service;
use crate::state::{Lease, ServiceState};
use crate::tick::{Action, Input, Tick};
use chrono::{DateTime, TimeDelta, Utc};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 1Password answers with this status (and `Retry-After` if given).
    OpStatus(u16, Option<u32>),
    OpTransport,
    OpNotJson,
    OpTruncated,
    /// Items without uuid/timestamp and a cursor that goes nowhere.
    OpMissingFields,
    /// 1Password's answer is over `max_response_bytes`.
    OpTooLarge,
    DevoStatus(u16),
    DevoTransport,
    /// Devo's answer is over `max_response_bytes` (it took the batch).
    DevoTooLarge,
    /// Devo takes the batch, then the instance is stopped before anything else.
    DevoAcceptThenStop,
    KvRead,
    KvWrite,
    /// 1Password answers the token introspection with this status.
    IntrospectionStatus(u16),
}

/// What the simulated store answers to a compare-and-swap. Whatever it
/// answers, the swap writes exactly when the record still holds what its
/// `Watch` read.
#[derive(Clone, Debug)]
pub enum SwapAnswers {
    /// The truth: ok when the swap wrote, "changed" when it did not.
    Honest,
    /// A swap that lost the race answers ok (and writes nothing): what Spin
    /// 3.x's Redis store would answer after an aborted `EXEC`, were the
    /// `UNWATCH` that follows it not refused.
    OkWhenLost,
    /// Every swap answers "changed", also one that wrote: Spin 3.5's Redis
    /// store, whose `UNWATCH <key>` after the transaction Redis refuses,
    /// that error being returned as a failed swap.
    AlwaysChanged,
    /// An answer drawn at random, whatever happened: ok, "changed" or a
    /// store error.
    Random(fastrand::Rng),
}

impl Fault {
    fn on_op(&self) -> bool {
        matches!(
            self,
            Fault::OpStatus(..)
                | Fault::OpTransport
                | Fault::OpNotJson
                | Fault::OpTruncated
                | Fault::OpMissingFields
                | Fault::OpTooLarge
        )
    }
    fn on_devo(&self) -> bool {
        matches!(self, Fault::DevoStatus(_) | Fault::DevoTransport | Fault::DevoTooLarge | Fault::DevoAcceptThenStop)
    }
    fn on_kv_read(&self) -> bool {
        matches!(self, Fault::KvRead)
    }
    fn on_kv_write(&self) -> bool {
        matches!(self, Fault::KvWrite)
    }
    fn on_introspection(&self) -> bool {
        matches!(self, Fault::IntrospectionStatus(_))
    }
}

pub struct Sim {
    pub now: DateTime<Utc>,
    /// Virtual time each action takes.
    pub step: TimeDelta,
    pub store: BTreeMap<String, Vec<u8>>,
    pub token: String,
    pub features: Vec<String>,
    pub account: Option<String>,
    /// Served events per service, oldest first, as JSON text.
    pub events: BTreeMap<Service, Vec<String>>,
    /// What Devo took, per tag.
    pub received: BTreeMap<String, Vec<String>>,
    /// 1Password event requests: (time, path, status).
    pub op_requests: Vec<(DateTime<Utc>, String, u16)>,
    /// Where each 1Password event request started: its `start_time`, or
    /// `cursor:<c>`.
    pub op_starts: Vec<String>,
    pub devo_requests: usize,
    /// 1Password's own limit per clock minute (answers 429 beyond it).
    pub op_limit_per_minute: Option<u32>,
    /// While set, 1Password answers a cursor with that same cursor,
    /// `has_more` and these events (none, or ones it served before): a
    /// cursor that does not move. A page read from a time is served as
    /// usual.
    pub stuck: Option<Vec<String>>,
    pub scripted: VecDeque<Fault>,
    pub random: Option<(fastrand::Rng, f64, Vec<Fault>)>,
    pub faults_injected: usize,
    pub requests_seen: usize,
    pub stops: usize,
    /// 429s 1Password's own limit gave (not injected ones).
    pub rate_limited: usize,
    /// What the store answers to a compare-and-swap.
    pub swap_answers: SwapAnswers,
    /// False: a swap never writes, whatever it answers (a broken store).
    pub swaps_write: bool,
    /// Swaps carried out (whatever they answered).
    pub swaps: usize,
    /// Swaps whose answer was not the truth (ok without writing, or a
    /// failure though it wrote).
    pub lies: usize,
    /// Of `lies`, answers of failure (or an error) to swaps that wrote.
    pub failed_but_written: usize,
    /// 1Password page requests made by a tick whose last lease swap of the
    /// service (whatever the store answered) wrote a lease that has not
    /// expired, while the store held another's, or none: two instances
    /// collecting the same service at once.
    pub unleased_fetches: usize,
    /// Services each tick works on at once (`Tick::with_lanes`); with more
    /// than one, a tick's requests are in flight together and their answers
    /// arrive in an order drawn from `arrivals`.
    pub lanes: usize,
    pub arrivals: fastrand::Rng,
    /// Time ticks spent waiting for the budget (`Action::Wait`).
    pub waited: TimeDelta,
    /// How long every answer of 1Password and Devo takes to arrive (the
    /// server acts on the request at once). Above zero, ticks are driven
    /// lane by lane (as with `lanes` above one), and while every lane waits
    /// the clock moves to the next answer or the next lease renewal
    /// (`Tick::next_renewal`), whichever comes first.
    pub latency: TimeDelta,
    /// Moments a tick still believed it held a service's lease (its last
    /// swap of the record wrote its lease) while the store held that very
    /// lease, expired: the lease lapsed under a tick that was working.
    pub lapsed: usize,
    /// Requests and waits the tick dropped (`Action::Abandon`).
    pub abandoned: usize,
    entropy: u64,
}

/// A tick in progress, for interleaving several.
pub struct Running {
    pub tick: Tick,
    watched: Option<(String, Option<Vec<u8>>)>,
    /// Per service record, the lease of this tick's last swap of it,
    /// whether it wrote or not: what the tick may believe it holds.
    leases: BTreeMap<String, Option<Lease>>,
    /// Lanes: the answers of requests sent and not yet handed back (the
    /// server has already acted on them), and the lane whose store actions
    /// are under way (answered before any other lane is polled).
    in_flight: Vec<(usize, Input, DateTime<Utc>)>,
    chain: Option<usize>,
    /// The renewal the tick was last told the time for (`step_lanes`).
    told: Option<DateTime<Utc>>,
}

impl Sim {
    pub fn new(now: DateTime<Utc>) -> Sim {
        Sim {
            now,
            step: TimeDelta::milliseconds(10),
            store: BTreeMap::new(),
            token: "op-secret-token".into(),
            features: vec!["auditevents".into(), "itemusages".into(), "signinattempts".into()],
            account: Some("ACCOUNT1".into()),
            events: BTreeMap::new(),
            received: BTreeMap::new(),
            op_requests: Vec::new(),
            op_starts: Vec::new(),
            devo_requests: 0,
            op_limit_per_minute: None,
            stuck: None,
            scripted: VecDeque::new(),
            random: None,
            faults_injected: 0,
            requests_seen: 0,
            stops: 0,
            rate_limited: 0,
            swap_answers: SwapAnswers::Honest,
            swaps_write: true,
            swaps: 0,
            lies: 0,
            failed_but_written: 0,
            unleased_fetches: 0,
            lanes: 1,
            arrivals: fastrand::Rng::with_seed(0),
            waited: TimeDelta::zero(),
            latency: TimeDelta::zero(),
            lapsed: 0,
            abandoned: 0,
            entropy: 1,
        }
    }

    /// `n` events for a service, `per_second` sharing each timestamp, ending before `until`.
    pub fn generate(&mut self, service: Service, n: usize, until: DateTime<Utc>, per_second: usize) {
        let start = until - TimeDelta::seconds((n / per_second.max(1)) as i64 + 1);
        let list = self.events.entry(service).or_default();
        let base = list.len();
        for i in 0..n {
            let t = start + TimeDelta::seconds((i / per_second.max(1)) as i64);
            list.push(format!(
                r#"{{"uuid":"{}{:08}","timestamp":"{}","note":"a \"quoted\"\nline é"}}"#,
                service.endpoint().to_uppercase(),
                base + i,
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
    }

    pub fn start(&mut self, config: Config) -> Running {
        self.entropy = self.entropy.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        Running {
            tick: Tick::new(config, self.now, self.entropy).with_lanes(self.lanes),
            watched: None,
            leases: BTreeMap::new(),
            in_flight: Vec::new(),
            chain: None,
            told: None,
        }
    }

    /// Runs a tick to its end; `None` when an injected stop ended it early.
    pub fn tick(&mut self, config: Config) -> Option<TickReport> {
        let mut running = self.start(config);
        self.finish(&mut running)
    }

    /// Runs a started tick to its end; `None` when an injected stop ended
    /// it early.
    pub fn finish(&mut self, running: &mut Running) -> Option<TickReport> {
        loop {
            match self.step(running) {
                Step::Continue => {}
                Step::Done(report) => return Some(report),
                Step::Stopped => return None,
            }
        }
    }

    /// One action of a running tick.
    pub fn step(&mut self, running: &mut Running) -> Step {
        if self.lanes > 1 || self.latency > TimeDelta::zero() {
            return self.step_lanes(running);
        }
        let action = running.tick.poll();
        let input = match self.perform(running, action) {
            Ok(input) => input,
            Err(step) => return step,
        };
        self.now += self.step;
        running.tick.handle(input, self.now);
        Step::Continue
    }

    /// One action of a tick with lanes: the lane whose store actions are
    /// under way, else any lane with something to do; when every lane
    /// waits, one answer in flight (drawn at random) arrives.
    fn step_lanes(&mut self, running: &mut Running) -> Step {
        // The number of lanes grows when the account phase ends, which a
        // poll of lane 0 may do: counted again each time.
        let mut order = running.chain.into_iter().chain(0..);
        while let Some(lane) = order.next().filter(|&l| l < running.tick.lanes()) {
            let Some(action) = running.tick.poll_lane(lane) else {
                running.chain = running.chain.filter(|&c| c != lane);
                continue;
            };
            if let Action::Abandon = action {
                let before = running.in_flight.len();
                running.in_flight.retain(|(l, _, _)| *l != lane);
                self.abandoned += before - running.in_flight.len();
                running.chain = Some(lane);
                return Step::Continue;
            }
            let sends = matches!(action, Action::Send { .. });
            let input = match self.perform(running, action) {
                Ok(input) => input,
                Err(step) => return step,
            };
            if sends {
                running.chain = None;
                running.in_flight.push((lane, input, self.now + self.latency));
            } else {
                running.chain = Some(lane);
                self.now += self.step;
                running.tick.handle_lane(lane, input, self.now);
            }
            return Step::Continue;
        }
        if running.in_flight.is_empty() {
            return Step::Done(running.tick.done().expect("no lane waits and nothing is in flight"));
        }
        let renewal = running.tick.next_renewal();
        if renewal.is_some_and(|r| r <= self.now) {
            // Due: the next poll of its lane starts it (it must: else the
            // tick would be told the time again and again).
            assert_ne!(running.told, renewal, "a renewal came due and no lane started it");
            running.told = renewal;
            running.tick.clock(self.now);
            return Step::Continue;
        }
        let arrived: Vec<usize> =
            (0..running.in_flight.len()).filter(|&i| running.in_flight[i].2 <= self.now).collect();
        if arrived.is_empty() {
            // Every answer is still on its way: the clock moves to the first
            // of them, or to the next renewal.
            let next = running.in_flight.iter().map(|(_, _, at)| *at).min().expect("something is in flight");
            self.now = renewal.map_or(next, |r| r.min(next));
            self.check_lapsed(running);
            running.tick.clock(self.now);
            return Step::Continue;
        }
        let (lane, input, _) = running.in_flight.swap_remove(arrived[self.arrivals.usize(..arrived.len())]);
        self.now += self.step;
        self.check_lapsed(running);
        running.tick.handle_lane(lane, input, self.now);
        Step::Continue
    }

    /// Carries out one action of a tick driven by hand (a test that looks
    /// at each action); the tick must not end or stop here.
    pub fn perform_now(&mut self, running: &mut Running, action: Action) -> Input {
        self.perform(running, action).unwrap_or_else(|_| panic!("the action ended the tick"))
    }

    /// Carries out an action; `Err` ends the tick (its report, or a stop).
    fn perform(&mut self, running: &mut Running, action: Action) -> Result<Input, Step> {
        Ok(match action {
            Action::Done(report) => return Err(Step::Done(report)),
            Action::Abandon => unreachable!("a tick driven by poll never renews a lease"),
            Action::Wait { until } => {
                // (Another tick interleaved with this one may have moved
                // the clock past it already.)
                if until > self.now {
                    self.waited += until - self.now;
                    self.now = until;
                }
                Input::Woke
            }
            Action::Load { key } => Input::Loaded(self.read(&key)),
            Action::Store { key, value } => Input::Stored(self.write(&key, value)),
            Action::Watch { key } => {
                let current = self.read(&key);
                running.watched = Some((key, current.clone().ok().flatten()));
                Input::Loaded(current)
            }
            Action::Swap { value } => {
                let (key, seen) = running.watched.take().expect("swap follows watch");
                let lease = key
                    .starts_with("service/")
                    .then(|| serde_json::from_slice::<ServiceState>(&value).ok())
                    .flatten()
                    .map(|s| s.lease);
                self.swaps += 1;
                let truth = if self.store.get(&key) == seen.as_ref() && self.swaps_write {
                    self.write(&key, value).map(|()| true)
                } else {
                    Ok(false)
                };
                if let Some(lease) = lease {
                    running.leases.insert(key, lease);
                }
                let answer = match &mut self.swap_answers {
                    SwapAnswers::Honest => truth.clone(),
                    SwapAnswers::OkWhenLost => truth.clone().map(|_| true),
                    SwapAnswers::AlwaysChanged => truth.clone().map(|_| false),
                    SwapAnswers::Random(rng) => match rng.u8(..3) {
                        0 => Ok(true),
                        1 => Ok(false),
                        _ => Err("injected swap answer".to_string()),
                    },
                };
                if answer != truth {
                    self.lies += 1;
                    self.failed_but_written += (truth == Ok(true)) as usize;
                }
                Input::Swapped(answer)
            }
            Action::Send { request } => {
                self.requests_seen += 1;
                self.check_lease(running, &request);
                match self.serve(&request) {
                    Served::Answer(r) => Input::Response(r),
                    Served::Stop => {
                        self.stops += 1;
                        return Err(Step::Stopped);
                    }
                }
            }
        })
    }

    /// The server's answer to a request, for a test driving a tick by hand
    /// (a scripted stop is not expected there).
    pub fn respond(&mut self, request: &HttpRequest) -> Result<HttpResponse, HttpFailure> {
        match self.serve(request) {
            Served::Answer(r) => r,
            Served::Stop => panic!("a stop was scripted"),
        }
    }

    /// Counts a 1Password page request by a tick that believes it holds a
    /// live lease the store does not give it.
    fn check_lease(&mut self, running: &Running, request: &HttpRequest) {
        if request.path.starts_with("/stream/") {
            return;
        }
        let Some(service) = Service::ALL.into_iter().find(|s| request.path.ends_with(s.endpoint())) else { return };
        let key = ServiceState::key(service);
        let Some(Some(believed)) = running.leases.get(&key) else { return };
        let stored = self.store.get(&key).and_then(|b| serde_json::from_slice::<ServiceState>(b).ok());
        let stored_holder = stored.and_then(|s| s.lease).map(|l| l.holder);
        if believed.expires > self.now && stored_holder.as_ref() != Some(&believed.holder) {
            self.unleased_fetches += 1;
        }
    }

    /// Counts the leases this tick believes it holds that lapsed in the
    /// store (`lapsed`).
    fn check_lapsed(&mut self, running: &Running) {
        for (key, believed) in &running.leases {
            let Some(believed) = believed else { continue };
            let stored = self.store.get(key).and_then(|b| serde_json::from_slice::<ServiceState>(b).ok());
            if stored.and_then(|s| s.lease).is_some_and(|l| l.holder == believed.holder && l.expires <= self.now) {
                self.lapsed += 1;
            }
        }
    }

    fn take_fault(&mut self, applies: fn(&Fault) -> bool) -> Option<Fault> {
        if let Some(i) = self.scripted.iter().position(applies) {
            return self.scripted.remove(i);
        }
        let (rng, rate, kinds) = self.random.as_mut()?;
        let candidates: Vec<&Fault> = kinds.iter().filter(|f| applies(f)).collect();
        if candidates.is_empty() || rng.f64() >= *rate {
            return None;
        }
        let f = candidates[rng.usize(..candidates.len())].clone();
        self.faults_injected += 1;
        Some(f)
    }

    fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.take_fault(Fault::on_kv_read) {
            Some(_) => Err("injected read failure".into()),
            None => Ok(self.store.get(key).cloned()),
        }
    }

    fn write(&mut self, key: &str, value: Vec<u8>) -> Result<(), String> {
        match self.take_fault(Fault::on_kv_write) {
            Some(_) => Err("injected write failure".into()),
            None => {
                self.store.insert(key.to_string(), value);
                Ok(())
            }
        }
    }

    fn serve(&mut self, request: &HttpRequest) -> Served {
        if request.path.starts_with("/stream/") {
            return self.serve_devo(request);
        }
        let authorized =
            request.headers.iter().any(|(k, v)| k == "authorization" && *v == format!("Bearer {}", self.token));
        if request.path.ends_with("/introspect") {
            if !authorized {
                return answer(401, "{}", None);
            }
            if let Some(Fault::IntrospectionStatus(status)) = self.take_fault(Fault::on_introspection) {
                return answer(status, "{\"Error\":{\"Message\":\"injected\"}}", None);
            }
            let body = serde_json::json!({"uuid": "TOKEN", "features": self.features, "account_uuid": self.account});
            return answer(200, &body.to_string(), None);
        }
        let asked: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        self.op_starts.push(match (asked["cursor"].as_str(), asked["start_time"].as_str()) {
            (Some(cursor), _) => format!("cursor:{cursor}"),
            (None, start) => start.unwrap_or_default().to_string(),
        });
        let minute = self.now.timestamp().div_euclid(60);
        let in_minute =
            self.op_requests.iter().filter(|(t, _, _)| t.timestamp().div_euclid(60) == minute).count() as u32;
        let status_and = |sim: &mut Sim, status: u16| sim.op_requests.push((sim.now, request.path.clone(), status));
        if self.op_limit_per_minute.is_some_and(|limit| in_minute >= limit) {
            self.rate_limited += 1;
            status_and(self, 429);
            return answer(429, "{\"Error\":{\"Message\":\"Too many requests\"}}", None);
        }
        match self.take_fault(Fault::on_op) {
            Some(Fault::OpStatus(status, retry_after)) => {
                status_and(self, status);
                return answer(status, "{\"Error\":{\"Message\":\"injected\"}}", retry_after);
            }
            Some(Fault::OpTransport) => {
                status_and(self, 0);
                return Served::Answer(Err(HttpFailure::Transport("connection reset".into())));
            }
            Some(Fault::OpNotJson) => {
                status_and(self, 200);
                return answer(200, "<html>login</html>", None);
            }
            Some(Fault::OpMissingFields) => {
                status_and(self, 200);
                return answer(200, r#"{"items":[{"action":"x"}],"cursor":"bogus","has_more":false}"#, None);
            }
            Some(Fault::OpTooLarge) => {
                // As the component reports a body it stopped reading at the cap.
                status_and(self, 200);
                return Served::Answer(Err(HttpFailure::TooLarge { limit: 4 << 20 }));
            }
            Some(Fault::OpTruncated) => {
                status_and(self, 200);
                let full = self.page(request);
                let cut = full.1[..full.1.len() / 2].to_string();
                return answer(200, &cut, None);
            }
            _ => {}
        }
        if !authorized {
            status_and(self, 401);
            return answer(401, "{}", None);
        }
        if let (Some(items), Some(cursor)) = (&self.stuck, asked["cursor"].as_str()) {
            let body =
                format!(r#"{{"items":[{}],"cursor":{},"has_more":true}}"#, items.join(","), serde_json::json!(cursor));
            status_and(self, 200);
            return answer(200, &body, None);
        }
        let (status, body) = self.page(request);
        status_and(self, status);
        answer(status, &body, None)
    }

    /// 1Password's paging: the cursor is `service:position:limit`.
    fn page(&self, request: &HttpRequest) -> (u16, String) {
        let service = Service::ALL.into_iter().find(|s| request.path.ends_with(s.endpoint())).expect("known path");
        let events = self.events.get(&service).map(Vec::as_slice).unwrap_or(&[]);
        let body: serde_json::Value = match serde_json::from_slice(&request.body) {
            Ok(v) => v,
            Err(_) => return (400, "{}".into()),
        };
        let (position, limit) = if let Some(cursor) = body["cursor"].as_str() {
            let parts: Vec<&str> = cursor.split(':').collect();
            match (parts.first(), parts.get(1).and_then(|p| p.parse().ok()), parts.get(2).and_then(|p| p.parse().ok()))
            {
                (Some(name), Some(pos), Some(limit)) if *name == service.name() => (pos, limit),
                _ => return (400, "{\"Error\":{\"Message\":\"invalid cursor\"}}".into()),
            }
        } else {
            let start = body["start_time"].as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok());
            let pos = events
                .iter()
                .position(|e| {
                    let v: serde_json::Value = serde_json::from_str(e).unwrap();
                    let t = DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
                    start.is_none_or(|s| t >= s)
                })
                .unwrap_or(events.len());
            (pos, body["limit"].as_u64().unwrap_or(100) as usize)
        };
        let end = (position + limit).min(events.len());
        let items = events[position.min(end)..end].join(",");
        let body = format!(
            r#"{{"items":[{items}],"cursor":"{}:{end}:{limit}","has_more":{}}}"#,
            service.name(),
            end < events.len()
        );
        (200, body)
    }

    fn serve_devo(&mut self, request: &HttpRequest) -> Served {
        self.devo_requests += 1;
        let fault = self.take_fault(Fault::on_devo);
        match fault {
            Some(Fault::DevoStatus(s)) => return answer(s, "", None),
            Some(Fault::DevoTransport) => return Served::Answer(Err(HttpFailure::Timeout)),
            Some(Fault::DevoTooLarge) => return Served::Answer(Err(HttpFailure::TooLarge { limit: 4 << 20 })),
            _ => {}
        }
        let tag = request.path.rsplit('/').next().unwrap().to_string();
        let gzip = request.headers.iter().any(|(k, v)| k == "content-encoding" && v == "gzip");
        let text = if gzip {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&request.body[..]), &mut text).unwrap();
            text
        } else {
            String::from_utf8(request.body.clone()).unwrap()
        };
        self.received.entry(tag).or_default().extend(text.lines().map(str::to_owned));
        if fault == Some(Fault::DevoAcceptThenStop) {
            return Served::Stop;
        }
        answer(200, "", None)
    }

    pub fn received(&self, service: Service) -> &[String] {
        self.received.get(service.default_tag()).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The most 1Password event requests seen in one clock minute.
    pub fn max_per_minute(&self) -> usize {
        let mut per: BTreeMap<i64, usize> = BTreeMap::new();
        for (t, _, _) in &self.op_requests {
            *per.entry(t.timestamp().div_euclid(60)).or_default() += 1;
        }
        per.values().copied().max().unwrap_or(0)
    }
}

impl Running {
    /// The key whose compare-and-swap this tick started: its next action is
    /// the swap.
    pub fn watching(&self) -> Option<&str> {
        self.watched.as_ref().map(|(key, _)| key.as_str())
    }
}

pub enum Step {
    Continue,
    Done(TickReport),
    Stopped,
}

enum Served {
    Answer(Result<HttpResponse, HttpFailure>),
    Stop,
}

fn answer(status: u16, body: &str, retry_after: Option<u32>) -> Served {
    let headers = retry_after.map(|s| vec![("retry-after".to_string(), s.to_string())]).unwrap_or_default();
    Served::Answer(Ok(HttpResponse { status, headers, body: body.as_bytes().to_vec() }))
}
