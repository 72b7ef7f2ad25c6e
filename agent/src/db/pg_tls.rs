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

use crate::calendar::{civil_from_days, days_from_civil};

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

/// The size in bits of an RSA key (a SubjectPublicKeyInfo's contents), `None` for
/// another kind.
fn rsa_bits(spki: &[u8]) -> Option<usize> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (0x30, alg, rest) = der(spki)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    if oid != RSA_ENCRYPTION {
        return None;
    }
    let (0x03, bits, _) = der(rest)? else {
        return None;
    };
    // BIT STRING: unused bits, then RSAPublicKey ::= SEQUENCE { modulus INTEGER, … }
    let (0x30, key, _) = der(bits.get(1..)?)? else {
        return None;
    };
    let (0x02, modulus, _) = der(key)? else {
        return None;
    };
    let first = modulus.iter().position(|&b| b != 0)?;
    let m = &modulus[first..];
    Some(m.len() * 8 - m[0].leading_zeros() as usize)
}

/// Whether a certificate says `CA:TRUE` in its basic constraints.
fn is_ca(t: &Tbs<'_>) -> bool {
    const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    extension(t, BASIC_CONSTRAINTS)
        .and_then(|v| der(v))
        .and_then(|(tag, seq, _)| (tag == 0x30).then_some(seq))
        .and_then(der)
        .is_some_and(|(tag, b, _)| tag == 0x01 && b.first().is_some_and(|&x| x != 0))
}

/// The value (the OCTET STRING's contents) of the extension `oid`.
fn extension<'a>(t: &Tbs<'a>, oid: &[u8]) -> Option<&'a [u8]> {
    let mut exts = t.extensions?;
    while let Some((0x30, ext, rest)) = der(exts) {
        exts = rest;
        let Some((0x06, id, mut fields)) = der(ext) else {
            continue;
        };
        if id != oid {
            continue;
        }
        // critical BOOLEAN DEFAULT FALSE, then the OCTET STRING.
        if let Some((0x01, _, after)) = der(fields) {
            fields = after;
        }
        return match der(fields) {
            Some((0x04, value, _)) => Some(value),
            _ => None,
        };
    }
    None
}

/// Whether the certificate names DNS hosts and IP addresses in its subject alternative
/// names: (has a DNS name, has an IP address).
fn san_kinds(t: &Tbs<'_>) -> (bool, bool) {
    const SAN: &[u8] = &[0x55, 0x1d, 0x11];
    let Some((0x30, mut names, _)) = extension(t, SAN).and_then(der) else {
        return (false, false);
    };
    let (mut dns, mut ip) = (false, false);
    while let Some((tag, _, rest)) = der(names) {
        names = rest;
        match tag {
            0x82 => dns = true,
            0x87 => ip = true,
            _ => {}
        }
    }
    (dns, ip)
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

/// The fields of a certificate's `TBSCertificate` that lockstep reads.
struct Tbs<'a> {
    /// Version 3 (version 1 and 2 certificates have no extensions).
    v3: bool,
    /// The signature algorithm's OID.
    sig_alg: &'a [u8],
    /// The issuer's and subject's `Name` (contents).
    issuer: &'a [u8],
    subject: &'a [u8],
    /// `notBefore`, `notAfter` (contents of the SEQUENCE).
    validity: &'a [u8],
    /// The SubjectPublicKeyInfo (contents).
    spki: &'a [u8],
    /// The extensions' SEQUENCE (contents).
    extensions: Option<&'a [u8]>,
}

/// Reads a certificate's `TBSCertificate`.
fn tbs(cert: &[u8]) -> Option<Tbs<'_>> {
    let (0x30, body, _) = der(cert)? else {
        return None;
    };
    let (0x30, mut f, _) = der(body)? else {
        return None;
    };
    let mut v3 = false;
    if let Some((0xa0, version, rest)) = der(f) {
        v3 = matches!(der(version), Some((0x02, [2], _)));
        f = rest;
    }
    let (0x02, _serial, f) = der(f)? else {
        return None;
    };
    let (0x30, alg, f) = der(f)? else {
        return None;
    };
    let (0x06, sig_alg, _) = der(alg)? else {
        return None;
    };
    let (0x30, issuer, f) = der(f)? else {
        return None;
    };
    let (0x30, validity, f) = der(f)? else {
        return None;
    };
    let (0x30, subject, f) = der(f)? else {
        return None;
    };
    let (0x30, spki, mut f) = der(f)? else {
        return None;
    };
    let mut extensions = None;
    while let Some((tag, value, rest)) = der(f) {
        f = rest;
        if tag == 0xa3 {
            extensions = der(value).and_then(|(t, e, _)| (t == 0x30).then_some(e));
        }
    }
    Some(Tbs {
        v3,
        sig_alg,
        issuer,
        subject,
        validity,
        spki,
        extensions,
    })
}

/// A certificate's validity, in seconds since 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    fn holds_at(&self, now: UnixTime) -> bool {
        let now = now.as_secs() as i64;
        self.not_before <= now && now <= self.not_after
    }

    /// "expired on 2021-01-01" or "is valid from 2030-01-01 only", as of now.
    fn describe(&self) -> String {
        let now = UnixTime::now().as_secs() as i64;
        if now < self.not_before {
            format!("is valid from {} only", ymd(self.not_before))
        } else {
            format!("expired on {}", ymd(self.not_after))
        }
    }
}

/// The validity of a certificate (`None` if it does not parse).
fn validity(cert: &[u8]) -> Option<Validity> {
    let v = tbs(cert)?.validity;
    let (tb, nb, rest) = der(v)?;
    let (ta, na, _) = der(rest)?;
    Some(Validity {
        not_before: asn1_time(tb, nb)?,
        not_after: asn1_time(ta, na)?,
    })
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18)
/// in seconds since 1970.
fn asn1_time(tag: u8, b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, h, m, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// `YYYY-MM-DD` of seconds since 1970.
fn ymd(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
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

    /// Throwaway certificates made with the openssl CLI, in a directory.
    struct Pki(tempfile::TempDir);

    impl Pki {
        fn new() -> Pki {
            Pki(tempfile::tempdir().unwrap())
        }

        fn openssl(&self, args: &[&str]) {
            let o = std::process::Command::new("openssl")
                .args(args)
                .current_dir(self.0.path())
                .output()
                .expect("the openssl CLI");
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }

        fn cert(&self, name: &str) -> CertificateDer<'static> {
            use rustls_pki_types::pem::PemObject;
            CertificateDer::from_pem_file(self.0.path().join(name)).unwrap()
        }

        /// A CA `name` with a key of `newkey` (`ec` or `rsa:1024`).
        fn ca(&self, name: &str, newkey: &str) -> CertificateDer<'static> {
            let mut args = vec!["req", "-x509", "-newkey", newkey];
            if newkey == "ec" {
                args.extend(["-pkeyopt", "ec_paramgen_curve:prime256v1"]);
            }
            let (key, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN={name}"),
            );
            args.extend([
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            self.openssl(&args);
            self.cert(&pem)
        }

        /// A new P-256 key `name.key` and a request `name.csr` to certify it for `cn`:
        /// the names of both files.
        fn key_and_csr(&self, name: &str, cn: &str) -> (String, String) {
            let (key, csr, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("/CN={cn}"),
            );
            self.openssl(&[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj,
            ]);
            (key, csr)
        }

        /// A CA `name` whose dates are long past (2020 to 2021).
        fn expired_ca(&self, name: &str) -> CertificateDer<'static> {
            let d = self.0.path();
            std::fs::create_dir_all(d.join("db")).unwrap();
            std::fs::write(d.join("db/index.txt"), "").unwrap();
            std::fs::write(d.join("db/serial"), "01\n").unwrap();
            std::fs::write(
                d.join("ca.cnf"),
                "[ca]\ndefault_ca=c\n[c]\ndatabase=db/index.txt\nnew_certs_dir=db\n\
                 serial=db/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n\
                 [v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
            )
            .unwrap();
            let (key, csr) = self.key_and_csr(name, name);
            let pem = format!("{name}.pem");
            self.openssl(&[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-selfsign",
                "-keyfile",
                &key,
                "-in",
                &csr,
                "-out",
                &pem,
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20210101000000Z",
                "-extensions",
                "v3",
                "-notext",
            ]);
            self.cert(&pem)
        }

        /// A server certificate `name` for `cn`, signed by `ca`, with the extensions
        /// `ext` (none: an X.509 version 1 certificate) and more `x509` arguments.
        fn leaf(
            &self,
            name: &str,
            ca: &str,
            cn: &str,
            ext: Option<&str>,
            more: &[&str],
        ) -> CertificateDer<'static> {
            let (_, csr) = self.key_and_csr(name, cn);
            let crt = format!("{name}.crt");
            let (ca_pem, ca_key, ext_file) = (
                format!("{ca}.pem"),
                format!("{ca}.key"),
                format!("{name}.ext"),
            );
            let mut args = vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
            ];
            if let Some(ext) = ext {
                std::fs::write(self.0.path().join(&ext_file), ext).unwrap();
                args.extend(["-extfile", &ext_file]);
            }
            args.extend(more);
            self.openssl(&args);
            self.cert(&crt)
        }
    }

    const SERVER_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                              extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n";

    fn verifier(check: Check, roots: Roots) -> Verifier {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = RootCertStore::empty();
        for r in &roots.certs {
            let _ = store.add(r.clone());
        }
        Verifier {
            check,
            store: Arc::new(store),
            roots: roots.certs,
            stale: roots.stale,
            provider,
        }
    }

    fn verify(v: &Verifier, cert: &CertificateDer<'_>, host: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(host.to_owned()).unwrap();
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn refusal(r: Result<(), rustls::Error>) -> String {
        let e = r.expect_err("refused");
        Refusal::of(&e)
            .unwrap_or_else(|| panic!("no reason named: {e:?}"))
            .to_owned()
    }

    #[test]
    fn what_rustls_refuses_and_libpq_takes_is_named() {
        let pki = Pki::new();
        let ca = pki.ca("ca", "ec");
        let weak_ca = pki.ca("weak-ca", "rsa:1024");
        let roots = |certs: Vec<CertificateDer<'static>>| Roots {
            certs,
            stale: Vec::new(),
        };
        let v = verifier(Check::Ca, roots(vec![ca.clone(), weak_ca]));
        // The control: a version 3 certificate, SHA-256, CA:FALSE.
        let good = pki.leaf("good", "ca", "localhost", Some(SERVER_EXT), &[]);
        verify(&v, &good, "localhost").unwrap();
        let v1 = pki.leaf("v1", "ca", "localhost", None, &[]);
        let e = refusal(verify(&v, &v1, "localhost"));
        assert!(e.contains("X.509 version 1") && e.contains("libpq"), "{e}");
        let ca_true = pki.leaf(
            "ca-true",
            "ca",
            "localhost",
            Some("basicConstraints=CA:TRUE\nsubjectAltName=DNS:localhost\n"),
            &[],
        );
        let e = refusal(verify(&v, &ca_true, "localhost"));
        assert!(e.contains("CA:TRUE") && e.contains("CA:FALSE"), "{e}");
        let sha1 = pki.leaf("sha1", "ca", "localhost", Some(SERVER_EXT), &["-sha1"]);
        let e = refusal(verify(&v, &sha1, "localhost"));
        assert!(e.contains("signed with SHA-1"), "{e}");
        let by_weak = pki.leaf("by-weak", "weak-ca", "localhost", Some(SERVER_EXT), &[]);
        let e = refusal(verify(&v, &by_weak, "localhost"));
        assert!(
            e.contains("RSA key of 1024 bits") && e.contains("CN=weak-ca"),
            "{e}"
        );
        // The server's own key too short: refused at the handshake's signature.
        assert!(weak_key_refusal(&pki.cert("weak-ca.pem"), "server's certificate").is_some());
        assert!(weak_key_refusal(&good, "server's certificate").is_none());
        // Signed by another CA: rustls's own error, no reason made up.
        let other = pki.ca("other", "ec");
        let v = verifier(Check::Ca, roots(vec![other]));
        let e = verify(&v, &good, "localhost").unwrap_err();
        assert!(Refusal::of(&e).is_none(), "{e:?}");
    }

    #[test]
    fn an_expired_root_of_sslrootcert_is_refused() {
        let pki = Pki::new();
        let old = pki.expired_ca("old-ca");
        let ca = pki.ca("ca", "ec");
        let dir = pki.0.path();
        std::fs::write(
            dir.join("old-only.pem"),
            std::fs::read(dir.join("old-ca.pem")).unwrap(),
        )
        .unwrap();
        let e = read_roots(&dir.join("old-only.pem")).unwrap_err();
        assert!(
            e.contains("old-only.pem")
                && e.contains("CN=old-ca")
                && e.contains("expired on 2021-01-01"),
            "{e}"
        );
        // With a current CA beside it: read, the old one set apart; what it signed is
        // refused, and why is said.
        let both = [
            std::fs::read(dir.join("old-ca.pem")).unwrap(),
            std::fs::read(dir.join("ca.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(dir.join("both.pem"), both).unwrap();
        let roots = read_roots(&dir.join("both.pem")).unwrap();
        assert_eq!(
            (roots.certs.clone(), roots.stale.clone()),
            (vec![ca], vec![old])
        );
        let v = verifier(Check::Ca, roots);
        let by_old = pki.leaf("by-old", "old-ca", "localhost", Some(SERVER_EXT), &[]);
        let e = refusal(verify(&v, &by_old, "localhost"));
        assert!(
            e.contains("CN=old-ca") && e.contains("expired on 2021-01-01"),
            "{e}"
        );
        let good = pki.leaf("good", "ca", "localhost", Some(SERVER_EXT), &[]);
        verify(&v, &good, "localhost").unwrap();
        assert_eq!(ymd(0), "1970-01-01");
        assert_eq!(asn1_time(0x17, b"210101000000Z"), Some(1_609_459_200));
        assert_eq!(asn1_time(0x18, b"20210101000000Z"), Some(1_609_459_200));
    }

    #[test]
    fn the_common_name_counts_only_without_an_alternative_name_of_the_hosts_kind() {
        let pki = Pki::new();
        let ca = pki.ca("ca", "ec");
        let v = verifier(
            Check::Full,
            Roots {
                certs: vec![ca],
                stale: Vec::new(),
            },
        );
        let leaf = |name: &str, cn: &str, san: &str| {
            pki.leaf(
                name,
                "ca",
                cn,
                Some(&format!(
                    "basicConstraints=CA:FALSE\nsubjectAltName={san}\n"
                )),
                &[],
            )
        };
        // A DNS name only: an address is matched by the common name, as libpq does.
        let dns_only = leaf("dns-only", "127.0.0.1", "DNS:db.example");
        verify(&v, &dns_only, "127.0.0.1").unwrap();
        verify(&v, &dns_only, "db.example").unwrap();
        assert!(verify(&v, &dns_only, "other.example").is_err());
        // An address in the names: the common name no longer counts for an address.
        let ip = leaf("ip", "127.0.0.1", "IP:10.0.0.1");
        assert!(verify(&v, &ip, "127.0.0.1").is_err());
        verify(&v, &ip, "10.0.0.1").unwrap();
        // An address only: a host name is matched by the common name.
        let ip_cn = leaf("ip-cn", "localhost", "IP:10.0.0.1");
        verify(&v, &ip_cn, "localhost").unwrap();
        // A DNS name that is not the host's: the common name does not count.
        let other = leaf("other", "localhost", "DNS:db.example");
        assert!(verify(&v, &other, "localhost").is_err());
    }
}
