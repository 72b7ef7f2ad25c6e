//! The config validation's tests: every rule, and the shipped example config.

use super::*;

fn parse_str(t: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/etc/lockstep/lockstep.toml"), t, true)
}

#[test]
fn commands_without_secrets_read_none() {
    let text = MINIMAL.replace(
        "[[source]]",
        "[nats]\nuser = \"u\"\npassword = { file = \"lockstep-test-no-such-secret\" }\n\n\
         [admin]\nlisten = \"127.0.0.1:9999\"\n\n[[source]]",
    ) + "\n[[source]]\nname = \"db\"\nkind = \"trigger\"\n\
          odbc = { env = \"LOCKSTEP_TEST_NEVER_SET\" }\ntables = [\"t\"]\n";
    let path = Path::new("/etc/lockstep/lockstep.toml");
    let e = parse(path, &text, true).unwrap_err();
    assert!(e.message.contains("lockstep-test-no-such-secret"), "{e}");
    let c = parse(path, &text, false).unwrap();
    assert_eq!(c.admin.listen, Some("127.0.0.1:9999".parse().unwrap()));
    assert_eq!(c.sources.len(), 2);
    // Two sources whose connection strings are unread are not taken for one database.
    let two = text.clone()
        + "\n[[source]]\nname = \"db2\"\nkind = \"trigger\"\n\
           odbc = { env = \"LOCKSTEP_TEST_NEVER_SET\" }\ntables = [\"t\"]\n";
    parse(path, &two, false).unwrap();
}

const MINIMAL: &str = "[agent]\nid = \"a1\"\nstate_dir = \"/tmp/x\"\n\n[[source]]\nname = \"log\"\nkind = \"tail\"\npaths = [\"/var/log/x*.log\"]\ntable = \"t\"\n";

#[test]
fn minimal_config_has_defaults() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(
        c.nats.servers,
        vec![NatsServer::from("nats://127.0.0.1:4222")]
    );
    assert_eq!(c.nats.max_in_flight, 4096);
    assert_eq!(c.admin.listen, Some("127.0.0.1:9187".parse().unwrap()));
    let SourceKind::Tail(t) = &c.sources[0].kind else {
        panic!("a tail source")
    };
    assert_eq!(t.format, Format::Jsonl);
    assert_eq!(t.start_at, StartAt::Beginning);
    assert_eq!(t.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
}

#[test]
fn unknown_key_names_its_line() {
    let e = parse_str(&format!("{MINIMAL}colour = \"blue\"\n")).unwrap_err();
    assert_eq!(e.at.map(|a| a.0), Some(10), "{e}");
    assert!(
        e.to_string().starts_with("/etc/lockstep/lockstep.toml:10:"),
        "{e}"
    );
    assert!(e.message.contains("colour"), "{e}");
}

#[test]
fn bad_values_name_their_line() {
    let e = parse_str(&MINIMAL.replace(
        "table = \"t\"",
        "table = \"t\"\nstat_interval = \"5 fortnights\"",
    ))
    .unwrap_err();
    assert_eq!(e.at.map(|a| a.0), Some(10), "{e}");
    let e = parse_str(&MINIMAL.replace("kind = \"tail\"", "kind = \"poll\"")).unwrap_err();
    assert_eq!(e.at.map(|a| a.0), Some(8));
    assert!(
        e.message.contains("`paths` is not a key of poll sources"),
        "{e}"
    );
    let e = parse_str(&MINIMAL.replace("table = \"t\"", "table = \"t\"\nodbc = \"DSN=X\""))
        .unwrap_err();
    assert!(e.message.contains("not a key of tail sources"), "{e}");
}

#[test]
fn quarantine_and_table_caps() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.agent.quarantine_max_bytes, DEFAULT_QUARANTINE_MAX_BYTES);
    let SourceKind::Tail(t) = &c.sources[0].kind else {
        panic!("a tail source")
    };
    assert_eq!(t.max_tables, DEFAULT_MAX_TABLES);
    let text = MINIMAL
        .replace(
            "id = \"a1\"",
            "id = \"a1\"\nquarantine_max_bytes = \"64MiB\"",
        )
        .replace("table = \"t\"", "table_field = \"t\"\nmax_tables = 5");
    let c = parse_str(&text).unwrap();
    assert_eq!(c.agent.quarantine_max_bytes, 64 << 20);
    let SourceKind::Tail(t) = &c.sources[0].kind else {
        panic!("a tail source")
    };
    assert_eq!(t.max_tables, 5);
    let e = parse_str(&text.replace("\"64MiB\"", "\"1KiB\"")).unwrap_err();
    assert!(e.message.contains("at least 64KiB"), "{e}");
    let e = parse_str(&text.replace("max_tables = 5", "max_tables = 0")).unwrap_err();
    assert!(e.message.contains("max_tables must be"), "{e}");
    let e = parse_str(&POLL.replace("table = \"PERMIT\"", "table = \"PERMIT\"\nmax_tables = 5"))
        .unwrap_err();
    assert!(e.message.contains("not a key of poll sources"), "{e}");
}

#[test]
fn close_idle() {
    let tail = |c: &Config| match &c.sources[0].kind {
        SourceKind::Tail(t) => t.close_idle,
        _ => panic!("a tail source"),
    };
    assert_eq!(tail(&parse_str(MINIMAL).unwrap()), Duration::from_secs(300));
    let text = MINIMAL.replace("table = \"t\"", "table = \"t\"\nclose_idle = \"30s\"");
    assert_eq!(tail(&parse_str(&text).unwrap()), Duration::from_secs(30));
    let e = parse_str(&text.replace("\"30s\"", "\"500ms\"")).unwrap_err();
    assert!(
        e.message.contains("`close_idle` must be at least 1s"),
        "{e}"
    );
    let e = parse_str(&POLL.replace(
        "table = \"PERMIT\"",
        "table = \"PERMIT\"\nclose_idle = \"1m\"",
    ))
    .unwrap_err();
    assert!(e.message.contains("not a key of poll sources"), "{e}");
}

const POLL: &str = "[agent]\nid = \"a1\"\n\n[[source]]\nname = \"permits\"\nkind = \"poll\"\nodbc = \"DSN=P\"\ntable = \"PERMIT\"\n";

#[test]
fn poll_sources() {
    let c = parse_str(POLL).unwrap();
    let SourceKind::Poll(p) = &c.sources[0].kind else {
        panic!("a poll source")
    };
    assert_eq!(p.interval, Duration::from_secs(30));
    assert!(p.key.is_empty() && p.columns.is_empty() && p.cursor.is_none());
    assert!(!p.initial_skip);
    assert_eq!(p.max_value_bytes, 64 << 10);
    let c = parse_str(&format!(
        "{POLL}key = [\"ID\"]\ncolumns = [\"ID\", \"STAT\"]\ncursor = \"TS\"\nlookback = \"2m\"\nfull_scan_every = \"10m\"\ninitial = \"skip\"\ninterval = \"5s\"\n"
    ))
    .unwrap();
    let SourceKind::Poll(p) = &c.sources[0].kind else {
        panic!("a poll source")
    };
    assert_eq!(p.key, ["ID"]);
    assert_eq!(p.cursor.as_deref(), Some("TS"));
    assert_eq!(p.lookback, Lookback::Time(Duration::from_secs(120)));
    assert_eq!(p.full_scan_every, Duration::from_secs(600));
    assert!(p.initial_skip);
    let c = parse_str(&format!("{POLL}cursor = \"SEQ\"\nlookback = 500\n")).unwrap();
    let SourceKind::Poll(p) = &c.sources[0].kind else {
        panic!("a poll source")
    };
    assert_eq!(p.lookback, Lookback::Count(500));

    let bad = [
        ("lookback = \"1m\"\n", 9, "`lookback` needs `cursor`"),
        ("initial = \"all\"\n", 9, "use \"snapshot\" or \"skip\""),
        ("query = \"SELECT * FROM v\"\n", 5, "needs `key`"),
        ("query = \"DELETE FROM v\"\n", 9, "must be a SELECT"),
        (
            "tables = [\"a\"]\n",
            9,
            "`tables` is not a key of poll sources",
        ),
        ("key = []\n", 9, "`key` is empty"),
        (
            "schema_check = \"1m\"\n",
            9,
            "`schema_check` is not a key of poll sources",
        ),
    ];
    for (extra, line, msg) in bad {
        let e = parse_str(&format!("{POLL}{extra}")).unwrap_err();
        assert!(e.message.contains(msg), "{extra}: {e}");
        assert_eq!(e.at.map(|a| a.0), Some(line), "{extra}: {e}");
    }
    let e = parse_str(&POLL.replace("odbc = \"DSN=P\"", "postgres = \"host=x\"")).unwrap_err();
    assert!(e.message.contains("read through ODBC"), "{e}");
    let e = parse_str(&format!("{MINIMAL}cursor = \"TS\"\n")).unwrap_err();
    assert!(e.message.contains("not a key of tail sources"), "{e}");
    let e = parse_str(&format!("{MINIMAL}schema_check = \"1m\"\n")).unwrap_err();
    assert!(
        e.message
            .contains("`schema_check` is not a key of tail sources"),
        "{e}"
    );
}

#[test]
fn trigger_sources() {
    let base = "[agent]\nid = \"a\"\nstate_dir = \"/tmp/x\"\n[nats]\nservers = [\"nats://127.0.0.1:4222\"]\nstream = \"S\"\n[[source]]\nname = \"vista\"\nkind = \"trigger\"\n";
    let c = parse_str(&format!(
        "{base}postgres = \"host=db dbname=vista\"\ntables = [\"appointments\"]\ncapture = \"rows\"\ninterval = \"200ms\""
    ))
    .unwrap();
    let SourceKind::Trigger(t) = &c.sources[0].kind else {
        panic!("a trigger source")
    };
    assert!(matches!(&t.db, TriggerDb::Postgres(p) if p.config().get_dbname() == Some("vista")));
    assert_eq!(t.tables, ["appointments"]);
    assert_eq!(t.capture, Capture::Rows);
    assert_eq!(t.interval, Duration::from_millis(200));
    assert!(!t.snapshot_initial);
    assert_eq!(t.schema_check, Duration::from_secs(60));
    let c = parse_str(&format!(
        "{base}odbc = \"DSN=VISTA\"\ntables = [\"a\"]\ndialect = \"db2\"\nsnapshot = \"initial\"\nschema_check = \"5s\""
    ))
    .unwrap();
    let SourceKind::Trigger(t) = &c.sources[0].kind else {
        panic!("a trigger source")
    };
    assert_eq!((t.capture, t.dialect), (Capture::Keys, Some(Dialect::Db2)));
    assert!(t.snapshot_initial);
    assert_eq!(t.schema_check, Duration::from_secs(5));
    for (extra, msg) in [
        (
            "postgres = \"x\"\ntables = [\"a\"]\nsnapshot = \"always\"",
            "snapshot `always`",
        ),
        ("tables = [\"a\"]", "needs `postgres"),
        ("postgres = \"x\"", "needs `tables"),
        (
            "postgres = \"x\"\nodbc = \"y\"\ntables = [\"a\"]",
            "not both",
        ),
        (
            "postgres = \"x\"\ntables = [\"a\"]\ncapture = \"all\"",
            "capture `all`",
        ),
        (
            "odbc = \"x\"\ntables = [\"a\"]\ndialect = \"informix\"",
            "dialect `informix`",
        ),
        (
            "postgres = \"x\"\ntables = [\"a\"]\npaths = [\"/x\"]",
            "not a key of trigger sources",
        ),
        (
            "postgres = \"x\"\ntables = [\"a\"]\nschema_check = \"500ms\"",
            "source `vista`: `schema_check` must be at least 1s",
        ),
    ] {
        let e = parse_str(&format!("{base}{extra}")).unwrap_err();
        assert!(e.message.contains(msg), "{extra}: {e}");
    }
}

#[test]
fn a_table_belongs_to_one_source_of_a_database() {
    let base = "[agent]\nid = \"a\"\nstate_dir = \"/tmp/x\"\n";
    let src = |name: &str, conn: &str, tables: &str| {
        format!("[[source]]\nname = \"{name}\"\nkind = \"trigger\"\n{conn}\ntables = [{tables}]\n")
    };
    let pg = "postgres = \"host=db dbname=vista user=a\"";
    let pg2 = "postgres = \"dbname=vista host=db user=b\"";
    let maria = "odbc = \"DRIVER={MariaDB Unicode};SERVER=db;DATABASE=vista;\"";
    // Different tables on one database, or one table name on two databases: fine.
    for ok in [
        format!(
            "{}{}",
            src("a", pg, "\"appointments\""),
            src("b", pg2, "\"clinics\"")
        ),
        format!(
            "{}{}",
            src("a", pg, "\"appointments\""),
            src("b", maria, "\"appointments\"")
        ),
        format!(
            "{}{}",
            src("a", pg, "\"x.orders\""),
            src("b", pg, "\"y.orders\"")
        ),
    ] {
        parse_str(&format!("{base}{ok}")).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let two = format!(
        "{base}{}{}",
        src("vista", pg, "\"appointments\""),
        src("clinic", pg2, "\"clinics\", \"appointments\"")
    );
    let e = parse_str(&two).unwrap_err();
    assert_eq!(e.at, Some((13, 10)), "{e}");
    assert!(
        e.message.starts_with(
            "source `clinic`: table `appointments` is already captured by source `vista` on the same database"
        ),
        "{e}"
    );
    let e = parse_str(&format!(
        "{base}{}{}",
        src("vista", maria, "\"appointments\""),
        src(
            "clinic",
            &maria.replace(";\"", ";UID=x\""),
            "\"public.APPOINTMENTS\""
        )
    ))
    .unwrap_err();
    assert!(
        e.message
            .contains("table `public.APPOINTMENTS` (as `appointments` there)"),
        "{e}"
    );
    let e = parse_str(&format!("{base}{}", src("vista", pg, "\"a\", \"A\""))).unwrap_err();
    assert!(e.message.contains("lists `a` and `A`"), "{e}");
}

#[test]
fn debounce_and_map() {
    let c = parse_str(&format!(
        "{MINIMAL}key = [\"ID\"]\ndebounce = {{ window = \"3s\", max_delay = \"30s\", max_keys = 500 }}\n\n[source.map]\ntables = {{ t = \"permits\" }}\nrename = {{ BRG_ID = \"bridgeId\" }}\nvalues = {{ CODE_STS = {{ A = \"ACTIVE\", 9 = 90 }} }}\nunknown = {{ CODE_STS = \"quarantine\" }}\ndrop = [\"SSN\"]\nadd = {{ region = \"VA-NE\", v = 2 }}\n"
    ))
    .unwrap();
    let s = &c.sources[0];
    assert_eq!(
        s.debounce,
        Some(DebounceConfig {
            window: Duration::from_secs(3),
            max_delay: Duration::from_secs(30),
            max_keys: 500
        })
    );
    let m = &s.map;
    assert_eq!(m.table("t"), "permits");
    assert_eq!(m.rename["BRG_ID"], "bridgeId");
    assert_eq!(m.values["CODE_STS"]["A"], Value::Text("ACTIVE".into()));
    assert_eq!(m.values["CODE_STS"]["9"], Value::Int(90));
    assert_eq!(m.unknown["CODE_STS"], Unknown::Quarantine);
    assert!(m.drop.contains("SSN") && m.drops_fields());
    assert_eq!(m.add[0], ("region".into(), Value::Text("VA-NE".into())));
    // Defaults: max_delay ten windows, 100,000 keys; no map, no debounce.
    let c = parse_str(&format!("{MINIMAL}debounce = {{ window = \"2s\" }}\n")).unwrap();
    let d = c.sources[0].debounce.unwrap();
    assert_eq!(
        (d.max_delay, d.max_keys),
        (Duration::from_secs(20), 100_000)
    );
    let c = parse_str(MINIMAL).unwrap();
    assert!(c.sources[0].debounce.is_none() && c.sources[0].map.is_identity());

    // Errors name the line of the value at fault.
    let bad = [
        ("debounce = { window = \"0s\" }\n", 11, "longer than 0"),
        (
            "debounce = { window = \"5s\", max_delay = \"1s\" }\n",
            11,
            "at least the window",
        ),
        (
            "debounce = { window = \"5s\", hold = \"1s\" }\n",
            11,
            "unknown field `hold`",
        ),
        (
            "debounce = { window = \"1s\", max_keys = 0 }\n",
            11,
            "max_keys",
        ),
        (
            "\n[source.map]\ndrop = [\"ID\"]\n",
            13,
            "`ID` is a key field",
        ),
        (
            "\n[source.map]\ndrop = [\"A\"]\nrename = { A = \"b\" }\n",
            14,
            "both dropped and renamed",
        ),
        (
            "\n[source.map]\nrename = { A = \"x\", B = \"x\" }\n",
            13,
            "two fields are renamed to `x`",
        ),
        (
            "\n[source.map]\nvalues = { S = { A = [1] } }\n",
            13,
            "`values.S.A` must be",
        ),
        (
            "\n[source.map]\nvalues = { S = { A = \"B\" } }\nunknown = \"drop\"\n",
            14,
            "`unknown` `drop`",
        ),
        (
            "\n[source.map]\nunknown = { S = \"null\" }\n",
            13,
            "`S` has no `values` table",
        ),
        (
            "\n[source.map]\nrenames = { A = \"b\" }\n",
            13,
            "unknown field `renames`",
        ),
        (
            "\n[source.map]\nrenames = { A = \"b\" }\n",
            13,
            "did you mean `rename`?",
        ),
    ];
    for (extra, line, msg) in bad {
        let e = parse_str(&format!("{MINIMAL}key = [\"ID\"]\n{extra}")).unwrap_err();
        assert!(e.message.contains(msg), "{extra}: {e}");
        assert_eq!(e.at.map(|a| a.0), Some(line), "{extra}: {e}");
    }
    // A poll source already sends one event per changed row per scan.
    let e = parse_str(&format!("{POLL}debounce = {{ window = \"1s\" }}\n")).unwrap_err();
    assert!(e.message.contains("make `interval` longer"), "{e}");
    assert_eq!(e.at.map(|a| a.0), Some(9));
    let c = parse_str(&format!("{POLL}[source.map]\ndrop = [\"SSN\"]\n")).unwrap();
    assert!(c.sources[0].map.drops_fields());
}

#[test]
fn secrets_from_env_and_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nats-token"), "s3cret\n").unwrap();
    // Only this test touches these variables.
    std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
    let c = parse_str(&MINIMAL.replace(
        "[[source]]",
        "[nats]\ntoken = { file = \"nats-token\" }\n\n[[source]]",
    ))
    .unwrap();
    assert_eq!(c.nats.auth, NatsAuth::Token(Secret::for_tests("s3cret")));
    // The packaged unit loads /etc/lockstep/credentials as `lockstep_<file>`.
    std::fs::write(dir.path().join("lockstep_nats-password"), "pa55\n").unwrap();
    let c = parse_str(&MINIMAL.replace(
        "[[source]]",
        "[nats]\nuser = \"u\"\npassword = { file = \"nats-password\" }\n\n[[source]]",
    ))
    .unwrap();
    assert_eq!(
        c.nats.auth,
        NatsAuth::UserPassword {
            user: "u".into(),
            password: Secret::for_tests("pa55")
        }
    );
    std::env::set_var("LOCKSTEP_TEST_PW", "pw");
    let c = parse_str(&MINIMAL.replace(
        "[[source]]",
        "[nats]\nuser = \"u\"\npassword = { env = \"LOCKSTEP_TEST_PW\" }\n\n[[source]]",
    ))
    .unwrap();
    assert!(format!("{c:?}").contains("password: ***"));
    let e = parse_str(&MINIMAL.replace(
        "[[source]]",
        "[nats]\ntoken = { env = \"LOCKSTEP_NOT_SET\" }\n\n[[source]]",
    ))
    .unwrap_err();
    assert!(e.message.contains("LOCKSTEP_NOT_SET"), "{e}");
}

mod shipped {
    use super::*;

    /// The example config shipped in packaging/ must always load.
    #[test]
    fn packaged_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/lockstep.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.agent.id, "legacy-host-01");
        assert_eq!(c.sources.len(), 1);
        let SourceKind::Tail(t) = &c.sources[0].kind else {
            panic!("a tail source")
        };
        assert_eq!(t.op_map.get("cancel"), Some(&Op::Delete));
    }

    /// So must the demo's.
    #[test]
    fn demo_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/lockstep.toml");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_near_miss_of_a_key_is_named() {
    assert_eq!(
        did_you_mean("unknown field `tabel`, expected one of `name`, `kind`, `table`, `tables`"),
        "unknown field `tabel`, expected one of `name`, `kind`, `table`, `tables`; did you mean `table`?"
    );
    // Nothing near: as serde says it.
    let far = "unknown field `colour`, expected one of `name`, `kind`";
    assert_eq!(did_you_mean(far), far);
    let other = "invalid type: string \"x\", expected a sequence";
    assert_eq!(did_you_mean(other), other);
    assert_eq!(edit_distance("tabel", "table"), 2);
    assert_eq!(edit_distance("", "ab"), 2);
    assert_eq!(edit_distance("Zürich", "Zurich"), 1);
}
