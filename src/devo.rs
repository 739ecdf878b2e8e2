//! Requests to Devo's HTTP ingestion endpoint (`stream` mode): one event per
//! line, batches kept under Devo's per-request limit.

use crate::config::Config;
use crate::error::{CollectorError, ErrorKind, DEVO_REJECTED, DEVO_TOO_LARGE, DEVO_UNREACHABLE};
use crate::http::{HttpFailure, HttpRequest, HttpResponse, Method};
use crate::json;
use crate::service::Service;
use std::borrow::Cow;

/// Devo takes at most 32 MB per request; stay a little below it.
pub const MAX_BATCH_BYTES: usize = 32_000_000;

/// An event's JSON text on one line. 1Password's JSON is normally compact,
/// but a raw value may contain whitespace (even newlines) between tokens;
/// strings cannot contain raw newlines, so removing whitespace outside
/// strings changes nothing but the layout.
pub fn event_line(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['\n', '\r']) {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(json::compact(raw))
}

/// One `stream` request body and how many events it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub body: Vec<u8>,
    pub events: u32,
}

/// Splits lines into request bodies of at most `max_bytes` and `max_events`
/// each (a single larger line goes alone: Devo will refuse it with 413 and
/// say so). Sizes are before compression, so a batch always fits.
pub fn batches<'a>(lines: impl IntoIterator<Item = &'a str>, max_bytes: usize, max_events: u32) -> Vec<Batch> {
    let mut done = Vec::new();
    let mut current = Batch { body: Vec::new(), events: 0 };
    for line in lines {
        let full = current.body.len() + line.len() + 1 > max_bytes || current.events >= max_events;
        if current.events > 0 && full {
            done.push(std::mem::replace(&mut current, Batch { body: Vec::new(), events: 0 }));
        }
        current.body.extend_from_slice(line.as_bytes());
        current.body.push(b'\n');
        current.events += 1;
    }
    if current.events > 0 {
        done.push(current);
    }
    done
}

/// gzip, as Devo's `stream` mode accepts with `Content-Encoding: gzip`.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    encoder.write_all(body).expect("writing to memory cannot fail");
    encoder.finish().expect("writing to memory cannot fail")
}

/// A `stream` request for one batch; compressed when `devo_gzip` is on.
pub fn stream_request(config: &Config, service: Service, body: Vec<u8>) -> HttpRequest {
    let path = config.devo_url.path(&format!(
        "/stream/{}/token!{}/{}/{}",
        config.devo_domain,
        config.devo_token.expose(),
        config.devo_host,
        config.tag(service)
    ));
    let mut headers = vec![("content-type".into(), "text/plain; charset=utf-8".into())];
    let body = if config.devo_gzip {
        headers.push(("content-encoding".into(), "gzip".into()));
        gzip(&body)
    } else {
        body
    };
    HttpRequest {
        method: Method::Post,
        scheme: config.devo_url.scheme,
        authority: config.devo_url.authority.clone(),
        path,
        headers,
        body,
    }
}

pub fn check_response(service: Service, tag: &str, response: &HttpResponse) -> Result<(), CollectorError> {
    if (200..300).contains(&response.status) {
        return Ok(());
    }
    let advice = match response.status {
        401 | 403 => "check devo_domain and devo_token, and that the token may write this tag",
        413 => "the batch is larger than Devo accepts",
        _ => "Devo did not take the batch",
    };
    Err(CollectorError::new(
        ErrorKind::DeliveryError,
        DEVO_REJECTED,
        format!(
            "Devo answered HTTP {} for {service} events (tag {tag}): {advice}; the checkpoint was not \
             advanced, so the page is sent again next tick",
            response.status
        ),
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
            "Devo could not be reached for {service} events: {failure}; check devo_url and the host's \
             allowed outbound hosts. The checkpoint was not advanced, so the page is sent again next tick"
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
