//! The telemetry endpoint: `GET /metrics` (the Prometheus text format
//! 0.0.4, or OpenMetrics when `Accept` asks for it: [`negotiate`]),
//! `/healthz` (200 while the process serves), `/readyz` (200, or 503 with
//! the reasons); any other path 404, any method but GET and HEAD 405.
//!
//! HTTP/1.1 on hyper, one request per connection (a scraper reconnects),
//! each connection given at most [`CONNECTION_TIMEOUT`] and at most
//! [`MAX_CONNECTIONS`] at once, so a slow or idle client cannot pin the
//! process. Connections are tasks of a `JoinSet` owned by [`serve`]: dropping
//! or aborting `serve` ends them too.

use super::{Format, Telemetry};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, VARY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use wasmtime_wasi_http::io::TokioIo;

/// Content type of `/metrics` in OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of `/metrics` in the Prometheus text format (the default).
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
const OPENMETRICS: &str = "application/openmetrics-text";
const TEXT: &str = "text/plain; charset=utf-8";

/// Longest a connection may take, request to response.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;

/// Serves `telemetry` on `listener` until this future is dropped or its
/// task aborted. Returns only on an accept error that is not transient.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>) -> io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if transient(&e) => {
                // Out of file descriptors and the like: wait, not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let telemetry = telemetry.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
                let response = respond(&telemetry, request.method(), request.uri().path(), accept);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(stream), service);
            // A client that hangs up or times out is its own problem.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    // EMFILE / ENFILE (too many open files) have no stable ErrorKind.
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut)
        || (cfg!(unix) && matches!(e.raw_os_error(), Some(23 | 24)))
}

/// The format of `/metrics` for a request's `Accept` header: OpenMetrics
/// when it names `application/openmetrics-text` with a quality above zero
/// and at least that of any range that takes the text format (`text/plain`,
/// `text/*`, `*/*`); the text format otherwise, and without the header.
/// Prometheus itself asks for OpenMetrics first.
pub fn negotiate(accept: Option<&str>) -> Format {
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, q)| q.trim().parse::<f32>().unwrap_or(0.0));
        match media.as_str() {
            OPENMETRICS => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => text = text.max(quality),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// The answer to one request.
fn respond(telemetry: &Telemetry, method: &Method, path: &str, accept: Option<&str>) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            telemetry.refresh(chrono::Utc::now());
            let format = negotiate(accept);
            let mut response = text(StatusCode::OK, telemetry.render(format));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
            headers.insert(VARY, HeaderValue::from_static("Accept"));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let readiness = telemetry.readiness();
            if readiness.ready {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let mut body = String::from("not ready\n");
                for reason in &readiness.reasons {
                    body.push_str(reason);
                    body.push('\n');
                }
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
