//! The few fields of an X.509 certificate the checks read, by a small DER reader: the
//! `TBSCertificate`, dates, RSA key size, basic constraints, alternative name kinds and
//! common names.

use rustls::pki_types::UnixTime;

use crate::calendar::{civil_from_days, days_from_civil};

/// The size in bits of an RSA key (a SubjectPublicKeyInfo's contents), `None` for
/// another kind.
pub(super) fn rsa_bits(spki: &[u8]) -> Option<usize> {
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
pub(super) fn is_ca(t: &Tbs<'_>) -> bool {
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
pub(super) fn san_kinds(t: &Tbs<'_>) -> (bool, bool) {
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

/// The fields of a certificate's `TBSCertificate` that lockstep reads.
pub(super) struct Tbs<'a> {
    /// Version 3 (version 1 and 2 certificates have no extensions).
    pub(super) v3: bool,
    /// The signature algorithm's OID.
    pub(super) sig_alg: &'a [u8],
    /// The issuer's and subject's `Name` (contents).
    pub(super) issuer: &'a [u8],
    pub(super) subject: &'a [u8],
    /// `notBefore`, `notAfter` (contents of the SEQUENCE).
    validity: &'a [u8],
    /// The SubjectPublicKeyInfo (contents).
    pub(super) spki: &'a [u8],
    /// The extensions' SEQUENCE (contents).
    extensions: Option<&'a [u8]>,
}

/// Reads a certificate's `TBSCertificate`.
pub(super) fn tbs(cert: &[u8]) -> Option<Tbs<'_>> {
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
    pub(super) fn holds_at(&self, now: UnixTime) -> bool {
        let now = now.as_secs() as i64;
        self.not_before <= now && now <= self.not_after
    }

    /// "expired on 2021-01-01" or "is valid from 2030-01-01 only", as of now.
    pub(super) fn describe(&self) -> String {
        let now = UnixTime::now().as_secs() as i64;
        if now < self.not_before {
            format!("is valid from {} only", ymd(self.not_before))
        } else {
            format!("expired on {}", ymd(self.not_after))
        }
    }
}

/// The validity of a certificate (`None` if it does not parse).
pub(super) fn validity(cert: &[u8]) -> Option<Validity> {
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
pub(super) fn asn1_time(tag: u8, b: &[u8]) -> Option<i64> {
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
pub(super) fn ymd(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The common names (OID 2.5.4.3) of a certificate's subject, given as the contents of
/// its `Name` SEQUENCE (a series of `SET { SEQUENCE { OID, value } }`).
pub(super) fn common_names(subject: &[u8]) -> Vec<String> {
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
pub(super) fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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
