//! Requests to Devo's HTTP ingestion endpoint (`stream` mode): one event per
//! line, batches kept under Devo's per-request limit.

use crate::config::Config;
use crate::error::{CollectorError, ErrorKind, DEVO_REJECTED, DEVO_TOO_LARGE, DEVO_UNREACHABLE};
use crate::http::{HttpFailure, HttpRequest, HttpResponse, Method};
use crate::json;
use crate::service::Service;
use std::borrow::Cow;

pub use crate::config::MAX_BATCH_BYTES;

/// An event's JSON text on one line. 1Password's JSON is normally compact,
/// but a raw value may contain whitespace (even newlines) between tokens;
/// strings cannot contain raw newlines, so removing whitespace outside
/// strings changes nothing but the layout. (A tick knows from
/// [`EventMeta::read`](crate::onepassword::EventMeta::read) whether an event
/// needs this, without a scan of its own.)
pub fn event_line(raw: &str) -> Cow<'_, str> {
    // On bytes: a check per char costs several times more, on every event.
    if !json::has_line_break(raw.as_bytes()) {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(json::compact(raw))
}

/// One `stream` request body and how many events it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub body: Vec<u8>,
    pub events: u32,
    /// The body is gzip-compressed (`Content-Encoding: gzip`).
    pub gzipped: bool,
}

/// Builds `stream` request bodies line by line, each line going straight
/// into its batch (compressed as it goes when gzip is on), so that a page
/// is never held as lines, plain batches and compressed batches at once.
/// A batch holds at most `max_bytes` before compression and `max_events`
/// lines (a single larger line goes alone: Devo will refuse it with 413 and
/// say so).
pub struct BatchWriter {
    max_bytes: usize,
    max_events: u32,
    gzip: bool,
    current: Option<BatchBody>,
    /// Bytes of the current batch before compression.
    plain_len: usize,
    events: u32,
    done: Vec<Batch>,
}

enum BatchBody {
    Plain(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl BatchBody {
    fn new(gzip: bool) -> BatchBody {
        if gzip {
            // flate2's fast level: JSON lines compress about 6:1 with it, and
            // the CPU goes to the page, not the compressor.
            BatchBody::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()))
        } else {
            BatchBody::Plain(Vec::new())
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        match self {
            BatchBody::Plain(v) => v.extend_from_slice(bytes),
            BatchBody::Gzip(e) => e.write_all(bytes).expect("writing to memory cannot fail"),
        }
    }

    fn finish(self) -> (Vec<u8>, bool) {
        match self {
            BatchBody::Plain(v) => (v, false),
            BatchBody::Gzip(e) => (e.finish().expect("writing to memory cannot fail"), true),
        }
    }
}

impl BatchWriter {
    pub fn new(max_bytes: usize, max_events: u32, gzip: bool) -> BatchWriter {
        BatchWriter { max_bytes, max_events, gzip, current: None, plain_len: 0, events: 0, done: Vec::new() }
    }

    /// Adds a line; true when it begins a new batch.
    pub fn push(&mut self, line: &str) -> bool {
        let full = self.plain_len + line.len() + 1 > self.max_bytes || self.events >= self.max_events;
        let begins = self.current.is_none() || full;
        if begins {
            self.close();
        }
        let body = self.current.get_or_insert_with(|| BatchBody::new(self.gzip));
        body.write(line.as_bytes());
        body.write(b"\n");
        self.plain_len += line.len() + 1;
        self.events += 1;
        begins
    }

    fn close(&mut self) {
        if let Some(body) = self.current.take() {
            let (body, gzipped) = body.finish();
            self.done.push(Batch { body, events: self.events, gzipped });
        }
        self.plain_len = 0;
        self.events = 0;
    }

    pub fn finish(mut self) -> Vec<Batch> {
        self.close();
        self.done
    }
}

/// Splits lines into plain request bodies (see [`BatchWriter`]).
pub fn batches<'a>(lines: impl IntoIterator<Item = &'a str>, max_bytes: usize, max_events: u32) -> Vec<Batch> {
    let mut writer = BatchWriter::new(max_bytes, max_events, false);
    for line in lines {
        writer.push(line);
    }
    writer.finish()
}

/// gzip, as Devo's `stream` mode accepts with `Content-Encoding: gzip`.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = BatchBody::new(true);
    encoder.write(body);
    encoder.finish().0
}

/// A `stream` request for a plain body; compressed when `devo_gzip` is on.
pub fn stream_request(config: &Config, service: Service, body: Vec<u8>) -> HttpRequest {
    let body = if config.devo_gzip { gzip(&body) } else { body };
    request(config, service, body, config.devo_gzip)
}

/// The `stream` request for a batch, its body moved into the request.
pub fn batch_request(config: &Config, service: Service, batch: &mut Batch) -> HttpRequest {
    request(config, service, std::mem::take(&mut batch.body), batch.gzipped)
}

fn request(config: &Config, service: Service, body: Vec<u8>, gzipped: bool) -> HttpRequest {
    let path = config.devo_url.path(&format!(
        "/stream/{}/token!{}/{}/{}",
        config.devo_domain,
        config.devo_token.expose(),
        config.devo_host,
        config.tag(service)
    ));
    let mut headers = vec![("content-type".into(), "text/plain; charset=utf-8".into())];
    if gzipped {
        headers.push(("content-encoding".into(), "gzip".into()));
    }
    HttpRequest {
        method: Method::Post,
        scheme: config.devo_url.scheme,
        authority: config.devo_url.authority.clone(),
        path,
        headers,
        body,
    }
}

/// What every delivery error says of the page: nothing is lost.
const SENT_AGAIN: &str = "the checkpoint was not advanced, so the page is sent again next tick";

/// A delivery error as validate's Devo probe reports it: the probe is an
/// empty request, so there is no page to send again.
pub fn for_probe(mut e: CollectorError) -> CollectorError {
    let lower = e.message.to_ascii_lowercase();
    if let Some(at) = lower.find(SENT_AGAIN) {
        e.message.truncate(at);
        let kept = e.message.trim_end_matches([' ', ';', '.']).len();
        e.message.truncate(kept);
        e.message.push_str("; validate's probe is an empty request: no event was sent");
    }
    e
}

pub fn check_response(service: Service, tag: &str, response: &HttpResponse) -> Result<(), CollectorError> {
    if (200..300).contains(&response.status) {
        return Ok(());
    }
    let advice = match response.status {
        401 | 403 => "check devo_domain and devo_token, and that the token may write this tag",
        404 => {
            "Devo has no such endpoint: devo_url is the endpoint's base URL (e.g. https://http-us.devo.io), \
             without a path such as /stream, which the collector adds"
        }
        413 => "the batch is larger than Devo accepts",
        _ => "Devo did not take the batch",
    };
    Err(CollectorError::new(
        ErrorKind::DeliveryError,
        DEVO_REJECTED,
        format!("Devo answered HTTP {} for {service} events (tag {tag}): {advice}; {SENT_AGAIN}", response.status),
    )
    .with_http_status(response.status))
}

pub fn transport_error(service: Service, failure: &HttpFailure) -> CollectorError {
    if let HttpFailure::TooLarge { limit } = failure {
        return CollectorError::new(
            ErrorKind::DeliveryError,
            DEVO_TOO_LARGE,
            format!(
                "Devo's answer for {service} events is larger than max_response_bytes ({limit} bytes) and was \
                 not read (Devo's answers are small: check devo_url); the checkpoint was not advanced, so the \
                 page is sent again next tick"
            ),
        );
    }
    CollectorError::new(
        ErrorKind::DeliveryError,
        DEVO_UNREACHABLE,
        format!(
            "Devo could not be reached for {service} events: {}; check devo_url and the host's \
             allowed outbound hosts; {SENT_AGAIN}",
            failure.for_setting("devo_url")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load, minimal};

    #[test]
    fn event_lines_are_single_lines_with_strings_untouched() {
        assert!(matches!(event_line(r#"{"a":1}"#), Cow::Borrowed(_)));
        let pretty = "{\n  \"a\": \"x y\\\" \\n z\",\r\n  \"b\": [1, 2]\n}";
        let line = event_line(pretty);
        assert_eq!(line, r#"{"a":"x y\" \n z","b":[1,2]}"#);
        let a: serde_json::Value = serde_json::from_str(pretty).unwrap();
        assert_eq!(a, serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }

    #[test]
    fn batches_respect_the_byte_limit_and_keep_order() {
        let lines = ["aaaa", "bbbb", "cccc", "dddddddddddd"];
        let got = batches(lines, 10, 100);
        let bodies: Vec<&[u8]> = got.iter().map(|b| b.body.as_slice()).collect();
        assert_eq!(bodies, vec![&b"aaaa\nbbbb\n"[..], b"cccc\n", b"dddddddddddd\n"]);
        assert_eq!(got.iter().map(|b| b.events).collect::<Vec<_>>(), vec![2, 1, 1]);
        assert!(batches([], 10, 100).is_empty());
        let by_count: Vec<u32> = batches(["a", "b", "c", "d", "e"], 1000, 2).iter().map(|b| b.events).collect();
        assert_eq!(by_count, vec![2, 2, 1]);
    }

    #[test]
    fn a_404_points_at_a_path_in_devo_url() {
        let r = HttpResponse { status: 404, headers: vec![], body: vec![] };
        let e = check_response(Service::Audit, "t.a", &r).unwrap_err();
        assert!(e.message.contains("without a path such as /stream"), "{}", e.message);
        assert!(e.message.ends_with(SENT_AGAIN), "{}", e.message);
        let probe = for_probe(e).message;
        assert!(probe.contains("/stream") && !probe.contains("next tick"), "{probe}");
    }

    #[test]
    fn stream_url_carries_domain_token_host_tag_and_redacts() {
        let mut c = load(&minimal()).unwrap();
        c.devo_gzip = false;
        let req = stream_request(&c, Service::ItemUsage, b"{}\n".to_vec());
        assert_eq!(req.body, b"{}\n");
        assert_eq!(
            req.path,
            "/stream/acme/token!abcdef0123456789abcdef0123456789/onepassword-collector/auth.agilebits.onepassword.itemusage"
        );
        assert!(!req.redacted_url().contains("abcdef0123"));
        c.devo_gzip = true;
        let req = stream_request(&c, Service::ItemUsage, b"{\"a\":1}\n".to_vec());
        assert!(req.headers.contains(&("content-encoding".into(), "gzip".into())));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&req.body[..]), &mut text).unwrap();
        assert_eq!(text, "{\"a\":1}\n");
    }

    #[test]
    fn non_2xx_and_transport_failures_are_delivery_errors() {
        let r = |status| HttpResponse { status, headers: vec![], body: vec![] };
        assert!(check_response(Service::Audit, "t.a", &r(200)).is_ok());
        assert!(check_response(Service::Audit, "t.a", &r(204)).is_ok());
        let e = check_response(Service::Audit, "t.a", &r(401)).unwrap_err();
        assert_eq!((e.id, e.kind, e.http_status), (DEVO_REJECTED, ErrorKind::DeliveryError, Some(401)));
        assert!(e.message.contains("401") && e.message.contains("devo_token"));
        // Whatever the status, the id stays ours.
        assert_eq!(check_response(Service::Audit, "t.a", &r(900)).unwrap_err().id, DEVO_REJECTED);
        assert_eq!(transport_error(Service::Audit, &HttpFailure::Denied).id, DEVO_UNREACHABLE);
        let e = transport_error(Service::Audit, &HttpFailure::TooLarge { limit: 65536 });
        assert_eq!((e.id, e.kind), (DEVO_TOO_LARGE, ErrorKind::DeliveryError));
        assert!(e.message.contains("65536 bytes") && e.message.contains("max_response_bytes"), "{}", e.message);
    }
}
