//! Outbound HTTP for a tenant: where it may go ([`policy`]: its own
//! `base_url` and `devo_url`, scheme, host and port each; plain http and
//! private networks only where the operator allows them), how a request is
//! sent ([`connect`]: the address is checked at connect time) and what the
//! guest reads back ([`body`]: a bounded response body). The hook below
//! joins them for wasi-http: a refused request fails with
//! `HttpRequestDenied`, and the reason goes to the tick's warnings.

pub mod body;
pub mod connect;
pub mod policy;

pub use self::policy::{OutboundPolicy, OutboundSettings, Refusal, DEFAULT_RESPONSE_BODY_BYTES};

use self::connect::Failure;
use std::future::Future;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

/// The most bytes one write to an outgoing body may carry. wasi-http buffers
/// up to two such writes per body on the host until the request is sent (or
/// forever, if it never is); its default of 1 MiB would let a guest park
/// gigabytes in the host through bodies it never sends. The collector
/// writes 4 KiB at a time.
pub const OUTGOING_BODY_CHUNK_BYTES: usize = 16 << 10;

impl WasiHttpHooks for OutboundPolicy {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let destination = match self.check_uri(request.uri()) {
            Ok(d) => d,
            Err(refusal) => {
                self.refusals.record(&refusal);
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
            }
        };
        let options = self.capped(options);
        let policy = self.clone();
        Box::new(async move {
            let permit = |ip| policy.check_address(&destination, ip);
            let limit = policy.settings().response_body_bytes;
            match connect::send(request, &destination, options, permit, limit).await {
                Ok((response, io)) => Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>)),
                Err(Failure::Refused(refusal)) => {
                    policy.refusals.record(&refusal);
                    Err(wasmtime_wasi_http::Error::HttpRequestDenied)
                }
                Err(Failure::Http(e)) => Err(e),
            }
        })
    }
}
