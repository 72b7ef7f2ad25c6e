//! TLS for tokio-postgres over rustls (the one async-nats uses already; no OpenSSL): a
//! small `MakeTlsConnect`, and the certificate checks of each `sslmode` as libpq does
//! them.
//!
//! - `require` (without a root certificate): encrypted, the certificate not checked.
//! - `verify-ca`: the chain must lead to a CA of `sslrootcert`; the host name is not
//!   looked at.
//! - `verify-full`: that, and the certificate must be issued for the host connected to:
//!   its subject alternative names (DNS names, `*.` wildcards, IP addresses), or, as
//!   libpq does, its common name when it has no DNS name (the PostgreSQL manual's own
//!   recipe makes such certificates).
//!
//! A certificate that is itself in `sslrootcert` (a self-signed server certificate given
//! as its own root, as the manual's recipe also does) is trusted as it is, as OpenSSL
//! does. The stream offers SCRAM channel binding (`tls-server-end-point`: a hash of the
//! server's certificate, by the hash of its signature algorithm, RFC 5929), so a
//! password login over TLS is bound to the certificate seen, as libpq does it
//! (`channel_binding=require` works; a certificate signed with SHA-512 or an algorithm
//! without a hash, such as Ed25519, gets none).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing (`prefer`, `require` without a root certificate).
    Nothing,
    /// The chain to a trusted CA (`verify-ca`).
    Ca,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// Makes a TLS connector for each host tokio-postgres connects to.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    /// `roots`: the certificates of `sslrootcert` (empty for [`Check::Nothing`]).
    pub fn new(check: Check, roots: Vec<CertificateDer<'static>>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = RootCertStore::empty();
        for r in &roots {
            // A certificate that is not a CA is still trusted as itself (see the module).
            let _ = store.add(r.clone());
        }
        let verifier = Verifier {
            check,
            store: Arc::new(store),
            roots,
            provider: provider.clone(),
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // PostgreSQL 17 asks for it with sslnegotiation=direct; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        // A name rustls cannot hold (a hostaddr-only connection gives none) is only an
        // error where the name is checked.
        let name = ServerName::try_from(domain.to_owned())
            .or_else(|_| ServerName::try_from("invalid.invalid".to_owned()))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// The encrypted stream.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let end_entity = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match end_entity.and_then(|c| tls_server_end_point(c.as_ref())) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with the hash of its
/// signature algorithm, SHA-256 for MD5 and SHA-1; `None` where that is not defined or
/// not at hand.
fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (_, body, _) = der(cert)?;
    let (_, _tbs, rest) = der(body)?;
    let (_, alg, _) = der(rest)?;
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let suite = match oid {
        // md5, sha1, sha256 WithRSAEncryption; ecdsa-with-SHA1 / -SHA256
        [r @ .., 4 | 5 | 11] if r == RSA => TLS13_AES_128_GCM_SHA256,
        _ if oid == ECDSA_SHA1 => TLS13_AES_128_GCM_SHA256,
        [e @ .., 2] if e == ECDSA_SHA2 => TLS13_AES_128_GCM_SHA256,
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        [r @ .., 12] if r == RSA => TLS13_AES_256_GCM_SHA384,
        [e @ .., 3] if e == ECDSA_SHA2 => TLS13_AES_256_GCM_SHA384,
        _ => return None,
    };
    let hash = suite.tls13()?.common.hash_provider.hash(cert);
    Some(hash.as_ref().to_vec())
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The checks of [`Check`]. The handshake's signatures are always verified (the server
/// holds the key of the certificate it shows).
#[derive(Debug)]
struct Verifier {
    check: Check,
    store: Arc<RootCertStore>,
    /// The certificates of `sslrootcert`, as given.
    roots: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == Check::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let chain = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.store,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        );
        if let Err(e) = chain {
            // A certificate given as its own root is trusted as it is (webpki refuses a
            // CA certificate as the server's), but not past its dates.
            use rustls::CertificateError as C;
            let pinned = self.roots.iter().any(|r| r.as_ref() == end_entity.as_ref());
            let dates = matches!(
                &e,
                rustls::Error::InvalidCertificate(
                    C::Expired
                        | C::ExpiredContext { .. }
                        | C::NotValidYet
                        | C::NotValidYetContext { .. }
                )
            );
            if !pinned || dates {
                return Err(e);
            }
        }
        if self.check == Check::Full {
            if let Err(e) = rustls::client::verify_server_name(&cert, server_name) {
                if !common_name_matches(end_entity, server_name) {
                    return Err(e);
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// libpq's fallback: a certificate with no DNS name in its subject alternative names is
/// matched by its common name (a `*.` wildcard covers one leftmost label).
fn common_name_matches(end_entity: &CertificateDer<'_>, server_name: &ServerName<'_>) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
        return false;
    };
    if cert.valid_dns_names().next().is_some() {
        return false;
    }
    let host = match server_name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => return false,
    };
    common_names(cert.subject())
        .iter()
        .any(|cn| name_matches(cn, &host))
}

/// `pattern` (a certificate's name) matches `host`, ignoring case; `*.example.com`
/// matches one label in its place.
fn name_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == host,
    }
}

/// The common names (OID 2.5.4.3) of a certificate's subject, given as the contents of
/// its `Name` SEQUENCE (a series of `SET { SEQUENCE { OID, value } }`).
fn common_names(subject: &[u8]) -> Vec<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut names = Vec::new();
    let mut rdns = subject;
    while let Some((0x31, set, rest)) = der(rdns) {
        rdns = rest;
        let mut atvs = set;
        while let Some((0x30, atv, rest)) = der(atvs) {
            atvs = rest;
            if let Some((0x06, oid, value)) = der(atv) {
                if oid == CN {
                    if let Some((_, text, _)) = der(value) {
                        names.push(String::from_utf8_lossy(text).into_owned());
                    }
                }
            }
        }
    }
    names
}

/// One DER element: (tag, contents, what follows).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&len, mut b) = b.split_first()?;
    let len = if len < 0x80 {
        len as usize
    } else {
        let n = (len & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let v = b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        b = &b[n..];
        v
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The certificates in the PEM file `path`.
pub fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let what = || format!("sslrootcert {}", path.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {}", what(), pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read {}: {}", what(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (a PEM file with -----BEGIN CERTIFICATE-----)",
            what()
        ));
    }
    Ok(certs)
}

/// The system's trusted CAs (`sslrootcert=system`).
pub fn system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map_or("none found".to_owned(), |e| e.to_string());
        return Err(format!(
            "sslrootcert=system: cannot load the system's trusted CAs ({why}); install \
             ca-certificates or give sslrootcert=/path/to/ca.pem"
        ));
    }
    Ok(found.certs)
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        other => format!("not a PEM file ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        // A skeleton certificate: SEQUENCE { SEQUENCE {}, SEQUENCE { OID }, BIT STRING }.
        let cert = |oid: &[u8]| {
            let mut alg = vec![0x06, oid.len() as u8];
            alg.extend_from_slice(oid);
            let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
            body.extend_from_slice(&alg);
            body.extend_from_slice(&[0x03, 0x01, 0x00]);
            let mut c = vec![0x30, body.len() as u8];
            c.extend_from_slice(&body);
            c
        };
        let ecdsa_sha256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let rsa_sha384 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
        let rsa_sha1 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        let ed25519 = [0x2b, 0x65, 0x70];
        assert_eq!(
            tls_server_end_point(&cert(&ecdsa_sha256)).map(|h| h.len()),
            Some(32)
        );
        assert_eq!(
            tls_server_end_point(&cert(&rsa_sha384)).map(|h| h.len()),
            Some(48)
        );
        assert_eq!(
            tls_server_end_point(&cert(&rsa_sha1)).map(|h| h.len()),
            Some(32)
        );
        assert_eq!(tls_server_end_point(&cert(&ed25519)), None);
        assert_eq!(tls_server_end_point(b"\x30\x05junk"), None);
    }

    #[test]
    fn names_match_like_libpq() {
        assert!(name_matches("db.example.com", "DB.example.com"));
        assert!(name_matches("*.example.com", "db.example.com"));
        assert!(!name_matches("*.example.com", "a.db.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("db.example.com", "db.example.org"));
        assert!(name_matches("127.0.0.1", "127.0.0.1"));
    }

    #[test]
    fn common_names_are_read_from_a_subject() {
        // SET { SEQUENCE { OID 2.5.4.10 (O), "Org" } }, SET { SEQUENCE { OID 2.5.4.3, "db.local" } }
        let mut subject = vec![
            0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x03,
        ];
        subject.extend_from_slice(b"Org");
        subject.extend_from_slice(&[
            0x31, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x08,
        ]);
        subject.extend_from_slice(b"db.local");
        assert_eq!(common_names(&subject), ["db.local"]);
        // Cut short: nothing, and no panic.
        assert!(common_names(&subject[..subject.len() - 3]).len() <= 1);
        assert!(common_names(&[0x31, 0x85, 0xff]).is_empty());
    }
}
