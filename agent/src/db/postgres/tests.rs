use super::*;

fn parse(s: &str) -> PgConn {
    PgConn::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn key_value_strings_give_their_ssl_keys_to_lockstep_and_the_rest_to_tokio_postgres() {
    let c = parse(
        "host=db.example port=5433 sslmode=verify-full sslrootcert='/etc/ssl/my ca.pem' \
         user=lockstep password='p w\\'x' dbname=vista",
    );
    assert_eq!(c.mode(), SslMode::VerifyFull);
    assert_eq!(
        c.root_cert,
        Some(RootCert::File("/etc/ssl/my ca.pem".into()))
    );
    assert_eq!(c.config().get_dbname(), Some("vista"));
    assert_eq!(c.config().get_ports(), [5433]);
    assert_eq!(c.config().get_password(), Some(&b"p w'x"[..]));
    assert!(!format!("{c:?}").contains("p w"), "{c:?}");
    assert_eq!(c.config().get_ssl_mode(), PgSslMode::Require);
    // Spaces around `=`, the last of two wins, as in libpq.
    let c = parse("host=h sslmode = require sslmode=verify-ca");
    assert_eq!(c.mode(), SslMode::VerifyCa);
    // The default is prefer.
    assert_eq!(parse("host=h").mode(), SslMode::Prefer);
    assert_eq!(
        parse("host=h sslmode=disable").config().get_ssl_mode(),
        PgSslMode::Disable
    );
    // Only an address: it is the name too (verify-full needs a name).
    let c = parse("hostaddr=127.0.0.1 sslmode=require");
    assert_eq!(c.config().get_hosts().len(), 1);
    let e = PgConn::parse("hostaddr=127.0.0.1 sslmode=verify-full").unwrap_err();
    assert!(e.contains("host="), "{e}");
    // A Unix-domain socket: no TLS, as in libpq.
    assert_eq!(
        parse("host=/var/run/postgresql sslmode=require")
            .config()
            .get_ssl_mode(),
        PgSslMode::Disable
    );
}

#[test]
fn urls_too() {
    let c = parse(
        "postgresql://lockstep:pw@db.example:5433/vista?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
    );
    assert_eq!(c.mode(), SslMode::VerifyCa);
    assert_eq!(c.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
    assert_eq!(c.config().get_dbname(), Some("vista"));
    assert_eq!(c.config().get_application_name(), Some("x"));
    assert_eq!(c.config().get_user(), Some("lockstep"));
    let c = parse("postgres://h/d?sslmode=require");
    assert_eq!(c.mode(), SslMode::Require);
    assert_eq!(parse("postgres://h/d").mode(), SslMode::Prefer);
}

#[test]
fn system_roots_mean_verify_full() {
    assert_eq!(
        parse("host=h sslrootcert=system").mode(),
        SslMode::VerifyFull
    );
    let e = PgConn::parse("host=h sslmode=require sslrootcert=system").unwrap_err();
    assert!(e.contains("verify-full"), "{e}");
}

#[test]
fn bad_strings_say_what_is_wrong_without_the_password() {
    let e = PgConn::parse("host=h sslmode=verify password=s3cret").unwrap_err();
    assert!(e.contains("verify-ca, verify-full"), "{e}");
    let e = PgConn::parse("host=h sslmode=allow").unwrap_err();
    assert!(e.contains("prefer"), "{e}");
    let e = PgConn::parse("host=h sslcert=/c.pem sslkey=/k.pem password=s3cret").unwrap_err();
    assert!(e.contains("client certificates"), "{e}");
    let e = PgConn::parse("host=h password='s3cret").unwrap_err();
    assert!(e.contains("never closed") && !e.contains("s3cret"), "{e}");
    let e = PgConn::parse("host=h bogus=1 password=s3cret").unwrap_err();
    assert!(
        e.contains("unknown key at byte 8") && !e.contains("s3cret"),
        "{e}"
    );
}

#[test]
fn a_password_with_a_blank_is_never_quoted_back_in_part() {
    // The second half of an unquoted password with a blank looks like a word with no
    // `=`, or like an unknown key: said by its position.
    for (s, secret, at) in [
        ("host=h password=my secret dbname=x", "secret", "byte 20"),
        ("host=h password=ab cd=ef", "cd", "byte 20"),
        ("  host=h password=ab cd=ef", "cd", "byte 22"),
        ("host=h password=ab cd='ef", "cd", "byte 20"),
        ("host=h password=ab x=1 y", "x", "byte 20"),
        ("postgresql://u@h/d?password=ab&cd=ef", "cd", "byte 32"),
    ] {
        let e = PgConn::parse(s).unwrap_err();
        assert!(e.contains(at), "{s}: {e}");
        // Printed as it is: nothing in it looks like a secret to the redaction.
        assert_eq!(crate::config::redact(&e), e);
        let quoted: Vec<&str> = e.split('`').skip(1).step_by(2).collect();
        assert!(
            !quoted.iter().any(|q| q.contains(secret)) && !e.contains(&format!(" {secret} ")),
            "{s}: {e}"
        );
    }
    // tokio-postgres's words pass only when they quote nothing of the string.
    let e = PgConn::parse("host=h port=x password=p").unwrap_err();
    assert!(e.contains("invalid value for option `port`"), "{e}");
    assert!(config_error("unknown option `s3c`").contains("does not parse"));
    assert!(
        !config_error("unexpected character at byte 4: expected `=` but got `s`").contains("`s`")
    );
}

#[test]
fn ssl_keys_lockstep_does_not_implement_are_refused_by_name() {
    for (s, key) in [
        ("host=h ssl=true", "ssl"),
        (
            "host=h ssl_min_protocol_version=TLSv1.3",
            "ssl_min_protocol_version",
        ),
        ("host=h sslsni=0", "sslsni"),
        ("host=h sslcompression=1", "sslcompression"),
        ("host=h sslcertmode=require", "sslcertmode"),
        ("postgresql://h/d?sslcompression=1", "sslcompression"),
        ("postgresql://h/d?ssl=true", "ssl"),
    ] {
        let e = PgConn::parse(s).unwrap_err();
        assert!(
            e.contains(&format!("`{key}`")) && e.contains("not supported"),
            "{s}: {e}"
        );
    }
    // An ssl-looking key nobody knows: by position.
    let e = PgConn::parse("host=h sslfoo=1").unwrap_err();
    assert!(e.contains("unknown key at byte 8"), "{e}");
    // What is implemented is taken.
    let c = parse("host=h sslmode=require sslnegotiation=postgres sslrootcert=");
    assert_eq!(c.mode(), SslMode::Require);
}

#[test]
fn require_with_a_root_certificate_checks_the_ca_and_verify_without_one_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.pem");
    let c = parse(&format!(
        "host=h sslmode=verify-full sslrootcert={}",
        none.display()
    ));
    let e = c.tls().unwrap_err();
    assert!(e.contains("none.pem"), "{e}");
    // No sslrootcert and no ~/.postgresql/root.crt.
    let default = Some(dir.path().join(".postgresql/root.crt"));
    let e = parse("host=h sslmode=verify-ca")
        .tls_with(default.clone())
        .unwrap_err();
    assert!(
        e.contains("sslrootcert=") && e.contains(".postgresql/root.crt"),
        "{e}"
    );
    let c = parse("host=h sslmode=require");
    assert_eq!(c.tls_with(default.clone()).unwrap().0, Check::Nothing);
    // With one there, require checks the CA (and reads the file).
    std::fs::create_dir_all(dir.path().join(".postgresql")).unwrap();
    std::fs::write(default.as_ref().unwrap(), "no certificate here").unwrap();
    let e = c.tls_with(default).unwrap_err();
    assert!(e.contains("holds no certificate"), "{e}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = parse(&format!(
        "host=h sslmode=require sslrootcert={}",
        junk.display()
    ))
    .tls()
    .unwrap_err();
    assert!(e.contains("holds no certificate"), "{e}");
}
