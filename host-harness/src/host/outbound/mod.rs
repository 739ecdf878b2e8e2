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

impl WasiHttpHooks for OutboundPolicy {
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
