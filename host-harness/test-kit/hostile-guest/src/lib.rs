//! A hostile tenant: a component of the `collector` world whose `tick` (and
//! `validate`, and Spin's `handle-cron-event`) misbehaves as its variable
//! `hostile_mode` says, so the host's limits and policies can be tested
//! against a guest that really does these things:
//!
//! | mode | what it does | ends by |
//! |---|---|---|
//! | `spin` | loops forever without calling the host | a trap (CPU) |
//! | `memory` | allocates and touches linear memory forever | a trap (memory) |
//! | `resources` | creates `wasi:http` `fields` forever, each filled with `fields_bytes` of headers, never dropping one | a trap (resource table) |
//! | `bodies` | creates outgoing requests and fills their bodies' buffers forever, never sending or dropping one | a trap (resource table) |
//! | `http` | sends a GET to every URL of `targets` (comma-separated) | returning what each call got |
//! | `many-requests` | starts `requests` (100) GETs to its `base_url` at once, keeping every handle and reading no answer, waits `wait_ms` (300) and counts what became of them | returning `refused:N`, `pending:N`, `other:N` |
//! | `hold-open` | sends GETs to the first of `targets` asking for hour-long timeouts, again and again | the host's wall deadline |
//! | `keys` | opens every bucket of `buckets`, lists it, reads every key of `keys` from it and from `wasi:config`, writes `hostile/marker` | returning everything it saw |
//! | `stderr` | writes `text` to its stderr | returning `written` |
//! | `panic` | writes `text` to its stderr and panics with it | a trap |
//!
//! Modes that return do so with a tick error of id [`HOSTILE`] whose message
//! holds one entry per thing tried (`what => result`, separated by
//! [`SEPARATOR`]), for the test to read.
//! Kept tiny on purpose (no serde, no allocator tricks): every line here is
//! something the test relies on.

wit_bindgen::generate!({
    world: "collector",
    path: "../../../wit",
    generate_all,
});

use exports::onepassword::collector::runner as wit;
use fermyon::spin_cron::cron_types;
use wasi::http::types as http;

/// Between the attempts of a returning mode's message: the host keeps a
/// guest's message on one line, so line breaks would not survive.
const SEPARATOR: &str = " | ";

/// The id of the error a hostile tick that returns reports: not one the
/// collector uses, so a test can tell the guest's own answer from the
/// host's (900).
const HOSTILE: u32 = 666;

struct Hostile;
export!(Hostile);

impl Guest for Hostile {
    fn handle_cron_event(_metadata: cron_types::Metadata) -> Result<(), cron_types::Error> {
        run().map(drop).map_err(cron_types::Error::Other)
    }
}

impl wit::Guest for Hostile {
    fn validate() -> Vec<wit::Check> {
        let detail = run().unwrap_or_else(|e| e);
        vec![wit::Check { name: "hostile".into(), status: wit::CheckStatus::Fail, detail }]
    }

    fn tick() -> Result<wit::TickReport, wit::CollectorError> {
        let message = run().unwrap_or_else(|e| e);
        Err(wit::CollectorError { id: HOSTILE, kind: "hostile".into(), message, http_status: None })
    }
}

fn var(key: &str) -> String {
    wasi::config::store::get(key).ok().flatten().unwrap_or_default()
}

fn list(key: &str) -> Vec<String> {
    var(key).split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Runs the mode; what a returning mode saw, one line per attempt.
fn run() -> Result<String, String> {
    match var("hostile_mode").as_str() {
        "spin" => spin(),
        "memory" => memory(),
        "resources" => resources(),
        "bodies" => bodies(),
        "http" => Ok(list("targets")
            .iter()
            .map(|url| format!("{url} => {}", get(url, HOUR_NS)))
            .collect::<Vec<_>>()
            .join(SEPARATOR)),
        "many-requests" => many_requests(),
        "hold-open" => hold_open(),
        "keys" => Ok(keys()),
        "stderr" => {
            eprint!("{}", var("text"));
            Ok("written".into())
        }
        "panic" => {
            eprint!("{}", var("text"));
            panic!("{}", var("text"))
        }
        other => Err(format!("unknown hostile_mode {other:?}")),
    }
}

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        // black_box: the loop must really run, not be folded away.
        n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Written, not only reserved: the pages are really used.
        hoard.push(std::hint::black_box(vec![0xa5u8; 1 << 20]));
    }
}

/// Host resources, each as big as the host lets it be: `fields` filled with
/// 1 KiB headers up to `fields_bytes` (the test passes just under the
/// host's limit: going over it is a trap of its own).
fn resources() -> ! {
    let budget: usize = var("fields_bytes").parse().unwrap_or(0);
    let value = vec![b'h'; 1024];
    loop {
        let fields = http::Fields::new();
        let mut filled = 0;
        for n in 0.. {
            let name = format!("x-hostile-{n}");
            // The host also counts its own bookkeeping, under 128 bytes.
            filled += name.len() + value.len() + 128;
            if filled > budget || fields.append(&name, &value).is_err() {
                break;
            }
        }
        // Forgotten, so the guest never drops the handle and the host's
        // table entry (and what it holds) stays.
        std::mem::forget(fields);
    }
}

/// Host memory through the guest's resources: each outgoing body buffers
/// what is written to it on the host until the request is sent, which it
/// never is.
fn bodies() -> ! {
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        let request = http::OutgoingRequest::new(http::Fields::new());
        if let Ok(body) = request.body() {
            if let Ok(stream) = body.write() {
                // Write as much as the host accepts without blocking.
                while let Ok(room) = stream.check_write() {
                    if room == 0 {
                        break;
                    }
                    let n = (room as usize).min(chunk.len());
                    if stream.write(&chunk[..n]).is_err() {
                        break;
                    }
                }
                std::mem::forget(stream);
            }
            std::mem::forget(body);
        }
        std::mem::forget(request);
    }
}

const HOUR_NS: u64 = 3600 * 1_000_000_000;

fn hold_open() -> Result<String, String> {
    let Some(url) = list("targets").into_iter().next() else { return Err("no targets".into()) };
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        // Every answer (the host's timeout cutting the request short) is
        // ignored: the guest asks again.
        let _ = std::hint::black_box(get(&url, HOUR_NS));
        std::hint::black_box(attempts);
    }
}

/// As many connections to its own allowed host as the host lets it have at
/// once: every request is started before any answer is looked at, and all
/// handles stay alive until it has counted them, so none is closed early.
fn many_requests() -> Result<String, String> {
    let url = var("base_url");
    let count: usize = var("requests").parse().unwrap_or(100);
    let wait_ms: u64 = var("wait_ms").parse().unwrap_or(300);
    let mut started = Vec::new();
    let mut other = 0;
    for _ in 0..count {
        match start(&url, HOUR_NS) {
            Ok(pending) => started.push(pending),
            Err(_) => other += 1,
        }
    }
    wasi::clocks::monotonic_clock::subscribe_duration(wait_ms * 1_000_000).block();
    let (mut refused, mut pending) = (0, 0);
    for future in &started {
        // `ready` lets the host look at the request once without waiting;
        // `get` alone would only report what an earlier poll saw.
        let _ = future.subscribe().ready();
        match future.get() {
            None => pending += 1,
            Some(Ok(Err(http::ErrorCode::HttpRequestDenied))) => refused += 1,
            Some(_) => other += 1,
        }
    }
    Ok([format!("refused:{refused}"), format!("pending:{pending}"), format!("other:{other}")].join(SEPARATOR))
}

/// One GET, asking the host for `timeout_ns` for each wait; what came of it.
fn get(url: &str, timeout_ns: u64) -> String {
    let pending = match start(url, timeout_ns) {
        Ok(pending) => pending,
        Err(e) => return e,
    };
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => format!("status:{}", response.status()),
        Some(Ok(Err(code))) => format!("error:{code:?}"),
        Some(Err(())) | None => "error:future".into(),
    }
}

/// Sends a GET (its empty body finished) without waiting for the answer.
fn start(url: &str, timeout_ns: u64) -> Result<http::FutureIncomingResponse, String> {
    let Some((scheme, rest)) = url.split_once("://") else { return Err("invalid:url".into()) };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = http::OutgoingRequest::new(http::Fields::new());
    let scheme = match scheme {
        "http" => http::Scheme::Http,
        "https" => http::Scheme::Https,
        other => http::Scheme::Other(other.into()),
    };
    if request.set_scheme(Some(&scheme)).is_err() {
        return Err("invalid:scheme".into());
    }
    if request.set_authority(Some(authority)).is_err() {
        return Err("invalid:authority".into());
    }
    if request.set_path_with_query(Some(path)).is_err() {
        return Err("invalid:path".into());
    }
    let Ok(body) = request.body() else { return Err("invalid:body".into()) };
    let options = http::RequestOptions::new();
    let _ = options.set_connect_timeout(Some(timeout_ns));
    let _ = options.set_first_byte_timeout(Some(timeout_ns));
    let _ = options.set_between_bytes_timeout(Some(timeout_ns));
    let pending =
        wasi::http::outgoing_handler::handle(request, Some(options)).map_err(|code| format!("error:{code:?}"))?;
    let _ = http::OutgoingBody::finish(body, None);
    Ok(pending)
}

fn kv_error(e: wasi::keyvalue::store::Error) -> String {
    match e {
        wasi::keyvalue::store::Error::NoSuchStore => "no-such-store".into(),
        wasi::keyvalue::store::Error::AccessDenied => "access-denied".into(),
        wasi::keyvalue::store::Error::Other(m) => format!("other:{m}"),
    }
}

/// Everything the guest can see of buckets and variables it names.
fn keys() -> String {
    let mut seen = Vec::new();
    let keys = list("keys");
    for name in list("buckets") {
        let bucket = match wasi::keyvalue::store::open(&name) {
            Ok(bucket) => bucket,
            Err(e) => {
                seen.push(format!("open {name} => {}", kv_error(e)));
                continue;
            }
        };
        seen.push(format!("open {name} => opened"));
        match bucket.list_keys(None) {
            Ok(listed) => seen.push(format!("list {name} => [{}]", listed.keys.join(","))),
            Err(e) => seen.push(format!("list {name} => {}", kv_error(e))),
        }
        for key in &keys {
            let got = match bucket.get(key) {
                Ok(Some(value)) => format!("value:{}", String::from_utf8_lossy(&value)),
                Ok(None) => "none".into(),
                Err(e) => kv_error(e),
            };
            seen.push(format!("get {name}/{key} => {got}"));
        }
        let written = bucket.set("hostile/marker", b"written by the hostile tenant").map_err(kv_error);
        seen.push(format!("set {name}/hostile/marker => {written:?}"));
    }
    for key in &keys {
        let got = wasi::config::store::get(key).map_err(|_| ()).ok().flatten();
        seen.push(format!("config {key} => {got:?}"));
    }
    if let Ok(all) = wasi::config::store::get_all() {
        for (key, value) in all {
            seen.push(format!("config-all {key} => {value}"));
        }
    }
    seen.join(SEPARATOR)
}
