//! PostgreSQL over TLS: `sslmode` and `sslrootcert` as libpq reads them, against a
//! private PostgreSQL cluster with a server certificate from a throwaway CA made here
//! with the openssl CLI (the shared server is left alone). Every connection goes through
//! the real binary: `lockstep check` reports each source's connection (over TLS or not,
//! or why it was refused), and a trigger source over `verify-full` captures rows into
//! JetStream.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::harness::{install, PrivatePg};

/// The throwaway CAs and certificates, in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let pki = Pki {
            dir: dir.to_owned(),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        // The server's certificate: for `localhost` (a DNS name), not for 127.0.0.1.
        pki.server("server", "ca", Some("DNS:localhost"));
        // As the PostgreSQL manual makes one: the name in the common name only.
        pki.server("server-cn", "ca", None);
        // The manual's quickest recipe: self-signed, its own root (`root.crt`).
        pki.openssl(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-text",
            "-out",
            "server-self.crt",
            "-keyout",
            "server-self.key",
            "-subj",
            "/CN=localhost",
        ]);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("the openssl CLI (scripts/ensure-deps installs it)");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=lockstep test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// A new P-256 key `name.key` and a request `name.csr` to certify it for `subj`.
    fn key_and_csr(&self, name: &str, subj: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subj,
        ]);
    }

    fn server(&self, name: &str, ca: &str, san: Option<&str>) {
        self.key_and_csr(name, "/CN=localhost");
        let mut ext = String::from(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        );
        if let Some(san) = san {
            ext.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

/// A private cluster that serves TLS with `pki`'s certificate `cert` and accepts only
/// TLS connections over TCP (`hostssl` only in pg_hba.conf).
fn tls_server(pki: &Pki, cert: &str) -> PrivatePg {
    let pg = PrivatePg::init();
    let data = pg.dir.join("data");
    configure(&pg, pki, cert, true, "");
    // The role `scram` logs in with a password (SCRAM, as a production server would
    // ask), everyone else is trusted; all of it over TLS only.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all scram 127.0.0.1/32 scram-sha-256\n\
         hostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    pg.up();
    pg.sql(&format!("CREATE ROLE scram LOGIN PASSWORD '{SCRAM_PW}'"));
    pg
}

/// The password of the role `scram` (never to be printed).
const SCRAM_PW: &str = "scram-s3cret-pw";

/// Points the server at certificate `cert` with `ssl` on or off (read at the next start
/// or reload).
fn configure(pg: &PrivatePg, pki: &Pki, cert: &str, ssl: bool, extra: &str) {
    let data = pg.dir.join("data");
    // The server reads its key only when the key is its own and private.
    for f in [format!("{cert}.crt"), format!("{cert}.key")] {
        let to = data.join(&f);
        std::fs::copy(pki.path(&f), &to).unwrap();
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        if pg.as_root() {
            let o = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&to)
                .output()
                .unwrap();
            assert!(o.status.success());
        }
    }
    let conf = data.join("postgresql.auto.conf");
    std::fs::write(
        conf,
        format!(
            "ssl = {}\nssl_cert_file = '{cert}.crt'\nssl_key_file = '{cert}.key'\n{extra}\n",
            if ssl { "on" } else { "off" }
        ),
    )
    .unwrap();
}

/// pg_hba.conf: TCP connections over TLS only, all trusted.
const TLS_ONLY_HBA: &str = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n";

/// pg_hba.conf: TCP connections with or without TLS, all trusted.
const ANY_HBA: &str = "local all all trust\nhost all all 127.0.0.1/32 trust\n";

/// Reloads the server's configuration and waits until `ssl` is as wanted.
async fn reload(pg: &PrivatePg, hba: &str, ssl: bool) {
    reload_until(pg, hba, "ssl", if ssl { "on" } else { "off" }).await
}

/// Reloads the server's configuration and waits until `setting` is `want`.
async fn reload_until(pg: &PrivatePg, hba: &str, setting: &str, want: &str) {
    let data = pg.dir.join("data");
    std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
    pg.run("pg_ctl", &["-D", data.to_str().unwrap(), "reload"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pg.sql(&format!("SHOW {setting}")) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not reload with {setting} = {want}:\n{}",
            std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `lockstep check` with one trigger source per (name, connection string), each on a
/// table of its own: each source's connection row, (ok, detail), by source name.
fn check_connections(w: &World, sources: &[(&str, String)]) -> BTreeMap<String, (bool, String)> {
    check_run(w, sources).0
}

/// [`check_connections`], and what `check` wrote to stderr (its warnings).
fn check_run(w: &World, sources: &[(&str, String)]) -> (BTreeMap<String, (bool, String)>, String) {
    let text: String = sources
        .iter()
        .map(|(name, conn)| {
            format!(
                "[[source]]\nname = \"{name}\"\nkind = \"trigger\"\npostgres = \"{}\"\ntables = [\"t_{name}\"]\n",
                conn.replace('\\', "\\\\").replace('"', "\\\"")
            )
        })
        .collect();
    let cfg = w.config_with(&text);
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(
        code == 0 || code == 1,
        "check exits 0 or 1: {code}\n{out}{err}"
    );
    assert!(
        !out.contains(SCRAM_PW) && !err.contains(SCRAM_PW),
        "{out}{err}"
    );
    let mut rows = BTreeMap::new();
    for (name, _) in sources {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("source {name} ")) && l.contains(" postgres "))
            .unwrap_or_else(|| panic!("no connection row for {name}:\n{out}{err}"));
        let after = line.split_once(" postgres ").unwrap().1.trim_start();
        let (status, detail) = after.split_once("  ").unwrap_or((after, ""));
        rows.insert(
            name.to_string(),
            (status.trim() == "ok", detail.trim().to_owned()),
        );
    }
    (rows, err)
}

fn ok_over_tls(rows: &BTreeMap<String, (bool, String)>, name: &str) {
    let (ok, detail) = &rows[name];
    assert!(
        *ok && detail.starts_with("connected over TLS (TLSv1."),
        "{name}: {detail}"
    );
}

fn ok_without_tls(rows: &BTreeMap<String, (bool, String)>, name: &str) {
    let (ok, detail) = &rows[name];
    assert!(
        *ok && detail.starts_with("connected without TLS"),
        "{name}: {detail}"
    );
}

fn refused(rows: &BTreeMap<String, (bool, String)>, name: &str, because: &str) {
    let (ok, detail) = &rows[name];
    assert!(!*ok, "{name} must be refused: {detail}");
    assert!(detail.contains(because), "{name}: `{because}` in: {detail}");
}

/// Every sslmode against a server that demands TLS, then against one that offers none,
/// then with a certificate that names the host in its common name only.
#[tokio::test]
async fn every_sslmode_behaves_as_libpq_says() {
    let w = World::new();
    let pki = Pki::new(&w.dir().join("pki"));
    let pg = tls_server(&pki, "server");
    let port = pg.port;
    let ca = pki.path("ca.pem");
    let other = pki.path("other-ca.pem");
    let kv = |host: &str, extra: &str| {
        format!("host={host} port={port} user=postgres dbname=postgres {extra}")
    };
    let verify = |host: &str, mode: &str, root: &Path| {
        kv(
            host,
            &format!("sslmode={mode} sslrootcert={}", root.display()),
        )
    };
    let rows = check_connections(
        &w,
        &[
            (
                "full_ok",
                verify("localhost", "verify-full", &ca),
            ),
            (
                "full_url",
                format!(
                    "postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
                    ca.display()
                ),
            ),
            (
                "full_wrong_ca",
                verify("localhost", "verify-full", &other),
            ),
            (
                "full_wrong_host",
                verify("127.0.0.1", "verify-full", &ca),
            ),
            (
                "ca_wrong_host",
                verify("127.0.0.1", "verify-ca", &ca),
            ),
            (
                "ca_wrong_ca",
                verify("127.0.0.1", "verify-ca", &other),
            ),
            ("require_no_ca", kv("127.0.0.1", "sslmode=require")),
            // With a root certificate, require checks the CA (as verify-ca).
            (
                "require_wrong_ca",
                verify("127.0.0.1", "require", &other),
            ),
            ("prefer", kv("127.0.0.1", "")),
            // Only an address: TLS all the same, as in libpq.
            (
                "hostaddr_require",
                format!("hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"),
            ),
            ("disable", kv("127.0.0.1", "sslmode=disable")),
            // A password over verify-full (SCRAM; the server offers SCRAM-SHA-256-PLUS
            // over TLS, lockstep takes SCRAM-SHA-256), and a wrong one.
            (
                "scram",
                format!(
                    "host=localhost port={port} user=scram password={SCRAM_PW} dbname=postgres sslmode=verify-full sslrootcert={}",
                    ca.display()
                ),
            ),
            // Bound to the certificate (SCRAM-SHA-256-PLUS, tls-server-end-point): the
            // server checks the hash of its own certificate.
            (
                "scram_bound",
                format!(
                    "host=localhost port={port} user=scram password={SCRAM_PW} dbname=postgres sslmode=verify-full sslrootcert={} channel_binding=require",
                    ca.display()
                ),
            ),
            (
                "scram_wrong",
                format!(
                    "host=localhost port={port} user=scram password=wr0ng-{SCRAM_PW} dbname=postgres sslmode=verify-full sslrootcert={}",
                    ca.display()
                ),
            ),
        ],
    );
    ok_over_tls(&rows, "scram");
    ok_over_tls(&rows, "scram_bound");
    refused(&rows, "scram_wrong", "password authentication failed");
    ok_over_tls(&rows, "full_ok");
    ok_over_tls(&rows, "full_url");
    refused(&rows, "full_wrong_ca", "not signed by a CA in");
    refused(
        &rows,
        "full_wrong_host",
        "not issued for the host name `127.0.0.1`",
    );
    ok_over_tls(&rows, "ca_wrong_host");
    refused(&rows, "ca_wrong_ca", "not signed by a CA in");
    ok_over_tls(&rows, "require_no_ca");
    refused(&rows, "require_wrong_ca", "not signed by a CA in");
    ok_over_tls(&rows, "prefer");
    ok_over_tls(&rows, "hostaddr_require");
    refused(&rows, "disable", "accepts only encrypted connections");
    assert!(
        rows["full_ok"].1.contains("sslmode verify-full"),
        "{:?}",
        rows["full_ok"]
    );

    // A legacy server that speaks only TLS 1.0 and 1.1 (which rustls does not): the
    // handshake fails; prefer falls back to plaintext with a warning, require refuses.
    configure(
        &pg,
        &pki,
        "server",
        true,
        "ssl_min_protocol_version = 'TLSv1'\nssl_max_protocol_version = 'TLSv1.1'",
    );
    reload_until(&pg, ANY_HBA, "ssl_max_protocol_version", "TLSv1.1").await;
    let (rows, err) = check_run(
        &w,
        &[
            ("prefer", kv("127.0.0.1", "")),
            ("require", kv("127.0.0.1", "sslmode=require")),
        ],
    );
    ok_without_tls(&rows, "prefer");
    assert!(
        err.contains("the TLS handshake failed under sslmode=prefer"),
        "a warning says so: {err}"
    );
    refused(&rows, "require", "TLS handshake failed");

    // The server stops offering TLS: prefer falls back to plaintext, require refuses.
    configure(&pg, &pki, "server", false, "");
    reload(&pg, ANY_HBA, false).await;
    let rows = check_connections(
        &w,
        &[
            ("prefer", kv("127.0.0.1", "sslmode=prefer")),
            ("require", kv("127.0.0.1", "sslmode=require")),
            ("disable", kv("127.0.0.1", "sslmode=disable")),
        ],
    );
    ok_without_tls(&rows, "prefer");
    refused(&rows, "require", "does not offer TLS");
    ok_without_tls(&rows, "disable");

    // A certificate with the host name in its common name only (no subject alternative
    // name), as the PostgreSQL manual makes one: verify-full takes it, as libpq does.
    configure(&pg, &pki, "server-cn", true, "");
    reload(&pg, TLS_ONLY_HBA, true).await;
    let rows = check_connections(
        &w,
        &[
            ("cn_ok", verify("localhost", "verify-full", &ca)),
            ("cn_wrong_host", verify("127.0.0.1", "verify-full", &ca)),
        ],
    );
    ok_over_tls(&rows, "cn_ok");
    refused(&rows, "cn_wrong_host", "not issued for the host name");

    // The manual's self-signed certificate, given as its own root.
    configure(&pg, &pki, "server-self", true, "");
    reload_until(&pg, TLS_ONLY_HBA, "ssl_cert_file", "server-self.crt").await;
    let self_root = pki.path("server-self.crt");
    let rows = check_connections(
        &w,
        &[
            ("self_ok", verify("localhost", "verify-full", &self_root)),
            ("self_other_root", verify("localhost", "verify-ca", &ca)),
        ],
    );
    ok_over_tls(&rows, "self_ok");
    refused(
        &rows,
        "self_other_root",
        "is a CA's (self-signed, say) and not in",
    );
}

/// Certificates libpq takes and rustls does not: `check` names the reason (an X.509
/// version 1 certificate, as `openssl x509 -req` makes one without `-extfile`); and a
/// root of `sslrootcert` past its dates, which webpki alone would take, is refused with
/// its date, as libpq refuses it.
#[tokio::test]
async fn certificates_rustls_refuses_are_named_and_an_expired_root_is_refused() {
    let w = World::new();
    let pki = Pki::new(&w.dir().join("pki"));
    // Version 1: no extensions.
    pki.openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server-v1.crt",
        "-days",
        "2",
    ]);
    std::fs::copy(pki.path("server.key"), pki.path("server-v1.key")).unwrap();
    // A CA whose dates are long past (2020 to 2021), and a server certificate it signed.
    std::fs::create_dir_all(pki.path("db")).unwrap();
    std::fs::write(pki.path("db/index.txt"), "").unwrap();
    std::fs::write(pki.path("db/serial"), "01\n").unwrap();
    std::fs::write(
        pki.path("old.cnf"),
        "[ca]\ndefault_ca=c\n[c]\ndatabase=db/index.txt\nnew_certs_dir=db\nserial=db/serial\n\
         default_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n[v3]\n\
         basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    pki.key_and_csr("old-ca", "/CN=lockstep test old-ca");
    pki.openssl(&[
        "ca",
        "-batch",
        "-config",
        "old.cnf",
        "-selfsign",
        "-keyfile",
        "old-ca.key",
        "-in",
        "old-ca.csr",
        "-out",
        "old-ca.pem",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20210101000000Z",
        "-extensions",
        "v3",
        "-notext",
    ]);
    pki.server("server-old", "old-ca", Some("DNS:localhost"));
    let both = [
        std::fs::read(pki.path("old-ca.pem")).unwrap(),
        std::fs::read(pki.path("ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(pki.path("old-and-current.pem"), both).unwrap();

    let pg = tls_server(&pki, "server-v1");
    let port = pg.port;
    let kv = |root: &str| {
        format!(
            "host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full \
             sslrootcert={}",
            pki.path(root).display()
        )
    };
    let rows = check_connections(&w, &[("v1", kv("ca.pem"))]);
    refused(&rows, "v1", "X.509 version 1");
    refused(&rows, "v1", "libpq");

    configure(&pg, &pki, "server-old", true, "");
    reload_until(&pg, TLS_ONLY_HBA, "ssl_cert_file", "server-old.crt").await;
    let rows = check_connections(
        &w,
        &[
            ("old_only", kv("old-ca.pem")),
            ("old_and_current", kv("old-and-current.pem")),
        ],
    );
    refused(&rows, "old_only", "expired on 2021-01-01");
    refused(&rows, "old_and_current", "CN=lockstep test old-ca");
    refused(&rows, "old_and_current", "expired on 2021-01-01");
}

/// A trigger source over verify-full, on a server that takes nothing but TLS: the
/// triggers are installed and the rows captured over it, and every one arrives.
#[tokio::test]
async fn a_trigger_source_over_verify_full_delivers_every_row() {
    let w = World::new();
    let pki = Pki::new(&w.dir().join("pki"));
    let pg = tls_server(&pki, "server");
    pg.sql("CREATE TABLE permits (id int PRIMARY KEY, status text)");
    let source = format!(
        "[[source]]\nname = \"permits\"\nkind = \"trigger\"\npostgres = \"host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}\"\ntables = [\"permits\"]\ncapture = \"rows\"\n",
        pg.port,
        pki.path("ca.pem").display()
    );
    let cfg = w.config_with(&source);
    install(&w, &cfg);
    pg.sql("INSERT INTO permits SELECT g, 'open-' || g FROM generate_series(1, 300) g");
    let mut agent = w.agent(&cfg);
    pg.sql("UPDATE permits SET status = 'closed' WHERE id <= 100");
    pg.sql("DELETE FROM permits WHERE id > 250");
    assert_eq!(
        w.wait_count(450, Duration::from_secs(60)).await,
        450,
        "{}",
        agent_log(&w)
    );
    wait_for(
        "the capture table to drain",
        Duration::from_secs(30),
        || pg.sql("SELECT count(*) FROM lockstep_changes") == "0",
    )
    .await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_eq!(msgs.len(), 450);
    let mut ids = std::collections::HashSet::new();
    for m in &msgs {
        assert!(ids.insert(m.id.clone()), "duplicate {}", m.id);
    }
    // The last event of each key is the table's last word on it.
    let mut last: BTreeMap<i64, (String, Option<String>)> = BTreeMap::new();
    for m in &msgs {
        let op = m.json["op"].as_str().unwrap().to_owned();
        let id = m.json["key"]["id"].as_i64().unwrap();
        let status = m.json["after"]["status"].as_str().map(str::to_owned);
        last.insert(id, (op, status));
    }
    assert_eq!(last.len(), 300);
    for (id, (op, status)) in &last {
        match id {
            1..=100 => assert_eq!((op.as_str(), status.as_deref()), ("u", Some("closed"))),
            251..=300 => assert_eq!(op, "d", "{id}"),
            _ => assert_eq!(
                (op.as_str(), status.clone()),
                ("c", Some(format!("open-{id}")))
            ),
        }
    }
}
