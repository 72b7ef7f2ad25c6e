use super::x509::{asn1_time, ymd};
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
