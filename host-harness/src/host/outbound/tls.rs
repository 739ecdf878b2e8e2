//! Which certificate authorities an https request trusts: the webpki roots
//! (Mozilla's list, built in: 1Password and Devo's public endpoints need
//! nothing else) and those the operator adds with `[host]
//! extra_ca_certificates`, for a Devo relay or an egress proxy that presents
//! a certificate of a private CA. Only the operator adds trust; a tenant
//! cannot.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The roots https connections are verified against, and the TLS client
/// configuration built from them once.
#[derive(Clone)]
pub struct TlsTrust {
    /// The operator's certificates, in the order of the file (DER).
    extra: Arc<[CertificateDer<'static>]>,
    config: Arc<rustls::ClientConfig>,
}

impl TlsTrust {
    /// The webpki roots and the certificates of `pem` (one or more
    /// `CERTIFICATE` blocks, meant to be CA certificates). Every block must
    /// be a certificate rustls can take as a trust anchor (its subject and
    /// key read); anything else is an error naming the block.
    pub fn with_extra_pem(pem: &[u8]) -> Result<TlsTrust, String> {
        let mut extra = Vec::new();
        for (n, block) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = block.map_err(|e| format!("certificate {} is not valid PEM ({e})", n + 1))?;
            extra.push(cert);
        }
        if extra.is_empty() {
            return Err("no PEM CERTIFICATE block (-----BEGIN CERTIFICATE-----) found".into());
        }
        let mut roots = webpki_roots();
        for (n, cert) in extra.iter().enumerate() {
            roots
                .add(cert.clone())
                .map_err(|e| format!("certificate {} cannot be read as a certificate ({e})", n + 1))?;
        }
        Ok(TlsTrust { extra: extra.into(), config: client_config(roots) })
    }

    /// [`TlsTrust::with_extra_pem`] of a file; errors name the file.
    pub fn with_extra_pem_file(path: &Path) -> Result<TlsTrust, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TlsTrust::with_extra_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// How many certificates the operator added.
    pub fn extra_count(&self) -> usize {
        self.extra.len()
    }

    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.config)
    }
}

/// The webpki roots only (built once per process: every runtime without
/// `extra_ca_certificates` shares it).
impl Default for TlsTrust {
    fn default() -> Self {
        static WEBPKI_ONLY: OnceLock<TlsTrust> = OnceLock::new();
        WEBPKI_ONLY.get_or_init(|| TlsTrust { extra: Arc::new([]), config: client_config(webpki_roots()) }).clone()
    }
}

impl PartialEq for TlsTrust {
    fn eq(&self, other: &Self) -> bool {
        self.extra == other.extra
    }
}

impl Eq for TlsTrust {}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsTrust {{ webpki roots + {} extra CA certificate(s) }}", self.extra.len())
    }
}

fn webpki_roots() -> rustls::RootCertStore {
    rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() }
}

/// ring, the given roots, no client certificate (the choices of
/// wasmtime-wasi-http's own sender).
fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_certificate_is_refused_with_what_was_expected() {
        for text in ["", "not pem at all", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"] {
            let e = TlsTrust::with_extra_pem(text.as_bytes()).unwrap_err();
            assert!(e.contains("no PEM CERTIFICATE block"), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_block_that_is_not_a_certificate_is_named() {
        let garbage = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let e = TlsTrust::with_extra_pem(garbage.as_bytes()).unwrap_err();
        assert!(e.starts_with("certificate 1 cannot be read as a certificate"), "{e}");
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = TlsTrust::with_extra_pem(broken.as_bytes()).unwrap_err();
        assert!(e.starts_with("certificate 1 is not valid PEM"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = TlsTrust::with_extra_pem_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.starts_with("cannot read /nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn the_default_trusts_the_webpki_roots_only_and_is_shared() {
        let (a, b) = (TlsTrust::default(), TlsTrust::default());
        assert_eq!(a.extra_count(), 0);
        assert_eq!(a, b);
        assert!(Arc::ptr_eq(&a.client_config(), &b.client_config()), "built once");
        assert!(format!("{a:?}").contains("0 extra"));
    }
}
