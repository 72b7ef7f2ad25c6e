//! TLS for tokio-postgres over rustls (the one async-nats uses already; no OpenSSL): a
//! small `MakeTlsConnect`, and the certificate checks of each `sslmode` as libpq does
//! them.
//!
//! - `require` (without a root certificate): encrypted, the certificate not checked.
//! - `verify-ca`: the chain must lead to a CA of `sslrootcert`; the host name is not
//!   looked at.
//! - `verify-full`: that, and the certificate must be issued for the host connected to:
//!   its subject alternative names (DNS names, `*.` wildcards, IP addresses), or, as
//!   libpq does, its common name when it has no alternative name of the host's kind (a
//!   DNS name for a host name, an IP address for an address; the PostgreSQL manual's
//!   own recipe makes certificates with none).
//!
//! Roots of `sslrootcert` out of their dates are left out when it is read, as OpenSSL
//! (and so libpq) refuses them and webpki would not look; when none is left, that is
//! the error. Certificates webpki refuses and libpq takes (X.509 version 1, a server
//! certificate that says `CA:TRUE`, SHA-1 or MD5 signatures, RSA keys under 2,048 bits)
//! are refused with that reason named ([`Refusal`]).
//!
//! A certificate that is itself in `sslrootcert` (a self-signed server certificate given
//! as its own root, as the manual's recipe also does) is trusted as it is, as OpenSSL
//! does. The stream offers SCRAM channel binding (`tls-server-end-point`: a hash of the
//! server's certificate, by the hash of its signature algorithm, RFC 5929), so a
//! password login over TLS is bound to the certificate seen, as libpq does it
//! (`channel_binding=require` works; a certificate signed with SHA-512 or an algorithm
//! without a hash, such as Ed25519, gets none).
//!
//! **Files.** This file: the connector, the stream, the verifier and the reasons a
//! certificate is refused; `sslrootcert` and the system roots read. Beside it, in
//! `pg_tls/`:
//! - `x509.rs`: the DER reader of the certificate fields those checks look at;
//! - `tests.rs`: the unit tests.

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

mod x509;

pub use x509::Validity;
use x509::{common_names, der, is_ca, rsa_bits, san_kinds, tbs, validity};

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
    /// `roots`: the certificates of `sslrootcert` (empty for [`Check::Nothing`]), those
    /// out of their dates already left out (see [`Roots`]).
    pub fn new(check: Check, roots: Roots) -> Result<Self, String> {
        let Roots {
            certs: roots,
            stale,
        } = roots;
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
            stale,
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
    /// Those of `sslrootcert` left out, out of their dates.
    stale: Vec<CertificateDer<'static>>,
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
        self.verify_chain(end_entity, intermediates, now)
            .map_err(|e| self.explained(e, end_entity, intermediates))?;
        if self.check == Check::Full {
            check_name(end_entity, server_name)?;
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
        .map_err(|e| weak_key_refusal(cert, "server's certificate").unwrap_or(e))
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
        .map_err(|e| weak_key_refusal(cert, "server's certificate").unwrap_or(e))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Verifier {
    /// The chain to a root of `sslrootcert`; a certificate given as its own root is
    /// trusted as it is (webpki refuses a CA certificate as the server's), but not past
    /// its dates.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        use rustls::CertificateError as C;
        let pinned = self.roots.iter().any(|r| r.as_ref() == end_entity.as_ref());
        let chain = rustls::server::ParsedCertificate::try_from(end_entity).and_then(|cert| {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.store,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )
        });
        match chain {
            Ok(()) => Ok(()),
            Err(e) => {
                let dates = matches!(
                    &e,
                    rustls::Error::InvalidCertificate(
                        C::Expired
                            | C::ExpiredContext { .. }
                            | C::NotValidYet
                            | C::NotValidYetContext { .. }
                    )
                );
                if pinned && !dates && validity(end_entity).is_some_and(|v| v.holds_at(now)) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// `e`, or, where rustls refuses what libpq takes (see [`why_refused`]) or the CA is
    /// one of `sslrootcert` left out for its dates, a [`Refusal`] that says so.
    fn explained(
        &self,
        e: rustls::Error,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> rustls::Error {
        use rustls::CertificateError as C;
        match &e {
            rustls::Error::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => return e,
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
                if let Some(why) = stale_issuer(&self.stale, end_entity, intermediates) {
                    return Refusal::error(why);
                }
            }
            _ => {}
        }
        why_refused(end_entity, intermediates, &self.roots).map_or(e, Refusal::error)
    }
}

/// The reason a certificate was refused, in the operator's words: one that libpq (with
/// OpenSSL) would take, or a root of `sslrootcert` out of its dates. It rides in the
/// handshake's error as a [`rustls::CertificateError::Other`].
#[derive(Debug)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    fn error(why: String) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(Refusal(why)),
        )))
    }

    /// The refusal in a rustls error, if it holds one.
    pub fn of(e: &rustls::Error) -> Option<&str> {
        match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                o.0.downcast_ref::<Refusal>().map(|r| r.0.as_str())
            }
            _ => None,
        }
    }
}

/// Why rustls (webpki) refuses a chain that libpq takes, if that is the case: an X.509
/// version 1 certificate, a server certificate that says `CA:TRUE`, a signature with
/// SHA-1 or MD5, an RSA key shorter than 2,048 bits (the server's, an intermediate's, or
/// that of the root of `sslrootcert` that signed the chain).
fn why_refused(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
) -> Option<String> {
    let chain = std::iter::once((end_entity, "the server's certificate".to_owned())).chain(
        intermediates.iter().map(|c| {
            (
                c,
                format!("the intermediate CA certificate {}", subject_of(c)),
            )
        }),
    );
    for (cert, what) in chain {
        let t = tbs(cert.as_ref())?;
        if !t.v3 {
            return Some(format!(
                "{what} is an X.509 version 1 certificate (as `openssl x509 -req` makes \
                 without -extfile), which rustls does not take, though libpq does: reissue it \
                 as version 3, with extensions (basicConstraints=CA:FALSE, \
                 subjectAltName=DNS:<the host>)"
            ));
        }
        if let Some(alg) = weak_hash(t.sig_alg) {
            return Some(format!(
                "{what} is signed with {alg}, which rustls does not take, though libpq may: \
                 reissue it signed with SHA-256"
            ));
        }
        if let Some(why) = weak_key(cert.as_ref(), &what) {
            return Some(why);
        }
    }
    let t = tbs(end_entity.as_ref())?;
    // Self-signed and not given as sslrootcert: the error says so already.
    let self_signed = t.issuer == t.subject;
    if is_ca(&t) && !self_signed {
        return Some(
            "the server's certificate says CA:TRUE (basicConstraints), which rustls does \
             not take as a server's, though libpq does: reissue it with \
             basicConstraints=CA:FALSE, or give that certificate itself as sslrootcert"
                .into(),
        );
    }
    // The root that signed the top of the chain.
    let top = intermediates.last().map_or(end_entity, |c| c);
    let issuer = tbs(top.as_ref())?.issuer;
    for r in roots {
        if tbs(r.as_ref()).is_some_and(|rt| rt.subject == issuer) {
            let what = format!("the CA certificate {} of sslrootcert", subject_of(r));
            if let Some(why) = weak_key(r.as_ref(), &what) {
                return Some(why);
            }
        }
    }
    None
}

/// A [`Refusal`] when `cert` has an RSA key shorter than rustls takes.
fn weak_key_refusal(cert: &CertificateDer<'_>, what: &str) -> Option<rustls::Error> {
    weak_key(cert.as_ref(), &format!("the {what}")).map(Refusal::error)
}

/// "… has an RSA key of N bits …" when `cert`'s key is RSA shorter than 2,048 bits.
fn weak_key(cert: &[u8], what: &str) -> Option<String> {
    let bits = rsa_bits(tbs(cert)?.spki)?;
    (bits < 2048).then(|| {
        format!(
            "{what} has an RSA key of {bits} bits, which rustls does not take (2,048 or \
             more), though libpq may: reissue it with a longer key"
        )
    })
}

/// The name of a hash too weak for rustls in a signature algorithm OID.
fn weak_hash(oid: &[u8]) -> Option<&'static str> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
    match oid {
        [r @ .., 4] if r == RSA => Some("MD5"),
        [r @ .., 5] if r == RSA => Some("SHA-1"),
        _ if oid == ECDSA_SHA1 || oid == DSA_SHA1 => Some("SHA-1"),
        _ => None,
    }
}

/// `subject_of` for messages: `CN=…` (or "(no common name)").
fn subject_of(cert: &CertificateDer<'_>) -> String {
    tbs(cert.as_ref())
        .map(|t| common_names(t.subject))
        .and_then(|n| n.into_iter().next())
        .map_or("(no common name)".to_owned(), |cn| format!("`CN={cn}`"))
}

/// The out-of-date root of `sslrootcert` that the chain leads to, said in words.
fn stale_issuer(
    stale: &[CertificateDer<'_>],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<String> {
    let issuers: Vec<&[u8]> = std::iter::once(end_entity)
        .chain(intermediates)
        .filter_map(|c| tbs(c.as_ref()).map(|t| t.issuer))
        .collect();
    stale.iter().find_map(|r| {
        let t = tbs(r.as_ref())?;
        issuers.contains(&t.subject).then(|| {
            format!(
                "the CA certificate {} of sslrootcert that signed the server's certificate {}: \
                 renew the CA (libpq refuses it too)",
                subject_of(r),
                validity(r.as_ref()).map_or("is out of its dates".into(), |v| v.describe())
            )
        })
    })
}

/// verify-full's name check: the subject alternative names, as rustls checks them; and,
/// as libpq does, the common name, but only when the certificate has no alternative
/// name of the host's kind (a DNS name for a host name, an IP address for an address).
fn check_name(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> Result<(), rustls::Error> {
    let by_san = rustls::server::ParsedCertificate::try_from(end_entity)
        .and_then(|cert| rustls::client::verify_server_name(&cert, server_name));
    match by_san {
        Ok(()) => Ok(()),
        Err(_) if common_name_matches(end_entity, server_name) => Ok(()),
        Err(e) => Err(e),
    }
}

/// libpq's fallback: a certificate with no subject alternative name of the host's kind
/// is matched by its common name (a `*.` wildcard covers one leftmost label).
fn common_name_matches(end_entity: &CertificateDer<'_>, server_name: &ServerName<'_>) -> bool {
    let Some(t) = tbs(end_entity.as_ref()) else {
        return false;
    };
    let (has_dns, has_ip) = san_kinds(&t);
    let host = match server_name {
        ServerName::DnsName(d) if !has_dns => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) if !has_ip => std::net::IpAddr::from(*ip).to_string(),
        _ => return false,
    };
    common_names(t.subject)
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

/// The root certificates of `sslrootcert`: those in their dates, and those left out
/// (expired, or not valid yet), which OpenSSL, and so libpq, would refuse, and webpki
/// would take (it does not look at a root's dates).
#[derive(Debug, Default)]
pub struct Roots {
    pub certs: Vec<CertificateDer<'static>>,
    pub stale: Vec<CertificateDer<'static>>,
}

impl Roots {
    /// `certs`, those out of their dates at `now` (seconds since 1970) set apart.
    pub fn dated(certs: Vec<CertificateDer<'static>>, now: UnixTime) -> Roots {
        let (certs, stale) = certs
            .into_iter()
            .partition(|c| validity(c.as_ref()).is_none_or(|v| v.holds_at(now)));
        Roots { certs, stale }
    }
}

/// The certificates in the PEM file `path`; those out of their dates are set apart, and
/// when none is left, that is the error.
pub fn read_roots(path: &std::path::Path) -> Result<Roots, String> {
    read_roots_at(path, UnixTime::now())
}

/// [`read_roots`] as of `now`.
fn read_roots_at(path: &std::path::Path, now: UnixTime) -> Result<Roots, String> {
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
    let roots = Roots::dated(certs, now);
    let dated = |c: &CertificateDer<'_>| {
        format!(
            "{} {}",
            subject_of(c),
            validity(c.as_ref()).map_or(String::new(), |v| v.describe())
        )
    };
    if roots.certs.is_empty() {
        return Err(format!(
            "every certificate of {} is out of its dates ({}): renew the CA, or give the \
             current one (libpq refuses these too)",
            what(),
            roots.stale.iter().map(dated).collect::<Vec<_>>().join("; ")
        ));
    }
    for c in &roots.stale {
        tracing::warn!("{}: the CA certificate {} is left out", what(), dated(c));
    }
    Ok(roots)
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
mod tests;
