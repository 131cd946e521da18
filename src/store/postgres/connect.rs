//! How a node reaches PostgreSQL: the URL as the log may show it, and TLS
//! as libpq's `sslmode` means it.

use std::sync::Arc;

use super::decode::backend;
use crate::store::StoreError;

/// A URL with its password, if any, replaced: for logs and errors.
pub fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(s) = url.find("://") {
        let rest = &url[s + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some((user, _)) = rest[..at].split_once(':')
        {
            out = format!("{}{user}:***{}", &url[..s + 3], &rest[at..]);
        }
    }
    match out.find("password=") {
        Some(p) => {
            let end = out[p..].find('&').map_or(out.len(), |e| p + e);
            format!("{}password=***{}", &out[..p], &out[end..])
        }
        None => out,
    }
}

/// TLS as libpq's `sslmode` means it: `disable`; `prefer` and `require`
/// encrypt without checking the server's certificate (as libpq does);
/// `verify-ca` and `verify-full` check it against the system's roots (and,
/// for both here, the host name). The driver itself knows only `disable`,
/// `prefer` and `require`: the verifying modes reach it as `require`.
pub(super) fn tls(verify: bool) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(backend)?;
    let config = if verify {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode` with the verifying modes mapped to `require`; whether the
/// certificate is to be verified.
pub(super) fn ssl_mode(url: &str) -> (String, bool) {
    for mode in ["verify-full", "verify-ca"] {
        let needle = format!("sslmode={mode}");
        if url.contains(&needle) {
            return (url.replace(&needle, "sslmode=require"), true);
        }
    }
    (url.to_owned(), false)
}

/// The certificate check of `sslmode=prefer|require`: none (the channel is
/// encrypted, the server not authenticated), while handshake signatures
/// are still verified.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
