//! https in front of the emulators, so that tests run the host's https path
//! (the handshake, certificate checks, `[host] extra_ca_certificates`) end
//! to end: a [`TestCa`] made afresh in memory for each test process, and a
//! [`TlsFront`] on loopback that ends TLS with a certificate of that CA for
//! `localhost` and passes the bytes on to a plain emulator.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority that exists for one test process.
pub struct TestCa {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ring makes a key");
        let cert = params.self_signed(&key).expect("the CA signs itself");
        TestCa { pem: cert.pem(), der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// The CA's certificate as PEM: what an operator's
    /// `extra_ca_certificates` file holds.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server configuration presenting a new certificate of this CA for
    /// `localhost` and 127.0.0.1 (with the CA's certificate as its chain).
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("valid names");
        let key = KeyPair::generate().expect("ring makes a key");
        let cert = params.signed_by(&key, &self.issuer).expect("the CA signs");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), self.der.clone()], key)
            .expect("a matching key");
        Arc::new(config)
    }
}

/// TLS on a loopback port, in front of a plain http server. Stops when
/// dropped.
pub struct TlsFront {
    port: u16,
    counts: Arc<Counts>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Default)]
struct Counts {
    handshakes: AtomicUsize,
    resumed: AtomicUsize,
    failed_handshakes: AtomicUsize,
}

impl TlsFront {
    /// Ends TLS with a certificate of `ca` and forwards each connection to
    /// `upstream` (an `http://127.0.0.1:PORT` base URL, as the emulators
    /// give).
    pub fn start(ca: &TestCa, upstream: &str) -> std::io::Result<TlsFront> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| std::io::Error::other(format!("upstream {upstream:?}: {e}")))?;
        // A runtime of its own: the front serves whatever runtime (or
        // blocking test) the client runs on.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let counts = Arc::new(Counts::default());
        let counted = Arc::clone(&counts);
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counts) = (acceptor.clone(), Arc::clone(&counted));
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            counts.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    counts.handshakes.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        counts.resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Ok(mut plain) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Ok(TlsFront { port, counts, runtime: Some(runtime) })
    }

    /// The base URL clients use: `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Connections whose TLS handshake completed.
    pub fn handshakes(&self) -> usize {
        self.counts.handshakes.load(Ordering::SeqCst)
    }

    /// Of those, handshakes that resumed an earlier session (no certificate
    /// sent, no full key exchange's signature).
    pub fn resumed_handshakes(&self) -> usize {
        self.counts.resumed.load(Ordering::SeqCst)
    }

    /// Connections whose TLS handshake failed (the client refused the
    /// certificate, or spoke no TLS).
    pub fn failed_handshakes(&self) -> usize {
        self.counts.failed_handshakes.load(Ordering::SeqCst)
    }

    /// [`TlsFront::failed_handshakes`] once it is at least `n`, or after 10
    /// s: the front learns of a refusal from the client's alert, which can
    /// arrive after the client has moved on.
    pub fn failed_handshakes_reaching(&self, n: usize) -> usize {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.failed_handshakes() < n && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.failed_handshakes()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
