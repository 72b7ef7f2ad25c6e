//! `lockstep triggers show|install|uninstall` against a live PostgreSQL, through the
//! real binary, checked with psql.

use crate::harness::*;

fn psql(sql: &str) -> String {
    psql_on("test", sql)
}

#[test]
fn show_install_and_uninstall_on_postgres() {
    let w = World::new();
    let schema = format!("lockstep_cli_{}", std::process::id());
    psql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TABLE {schema}.appointments (id int PRIMARY KEY, clinic text);
         CREATE TABLE {schema}.clinics (region text, code int, name text, PRIMARY KEY (region, code));
         CREATE TABLE {schema}.notes (body text);"
    ));
    let cfg_for = |tables: &str| {
        let text = format!(
            "[agent]\nid = \"e2e\"\nstate_dir = \"{state}\"\n\n[nats]\nservers = [\"{url}\"]\nstream = \"E2E\"\nsubject_prefix = \"legacy\"\ncreate_stream = true\n\n[admin]\nlisten = \"\"\n\n[[source]]\nname = \"vista\"\nkind = \"trigger\"\npostgres = \"host=127.0.0.1 user=postgres dbname=test options='-c search_path={schema}'\"\ntables = [{tables}]\n",
            state = w.dir().join("state").display(),
            url = w.nats.url(),
        );
        let p = w.dir().join(format!("trigger-{}.toml", tables.len()));
        std::fs::write(&p, text).unwrap();
        p
    };
    let cfg = cfg_for("\"appointments\", \"clinics\"");
    let cfg = cfg.to_str().unwrap();
    let capture_exists = || {
        psql(&format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' AND tablename = 'lockstep_changes'")) == "1"
    };

    let (code, out, err) = lockstep(&["triggers", "show", "--source", "vista", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("lockstep_capture('keys', 'appointments', 'id')"),
        "{out}"
    );
    assert!(
        out.contains("lockstep_capture('keys', 'clinics', 'region', 'code')"),
        "{out}"
    );
    assert!(!capture_exists(), "show changed the database");

    let (code, out, _) = lockstep(&["check", "--config", cfg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("triggers not installed"), "{out}");

    for _ in 0..2 {
        let (code, out, err) =
            lockstep(&["triggers", "install", "--source", "vista", "--config", cfg]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("appointments (key id), clinics (key region, code)"),
            "{out}"
        );
    }
    psql(&format!(
        "INSERT INTO {schema}.appointments VALUES (445, 'North'); UPDATE {schema}.appointments SET clinic = 'South'"
    ));
    assert_eq!(
        psql(&format!("SELECT string_agg(op || ' ' || pk::jsonb::text, ';' ORDER BY seq) FROM {schema}.lockstep_changes")),
        "c {\"id\": 445};u {\"id\": 445}"
    );
    let (code, out, _) = lockstep(&["check", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("triggers installed"), "{out}");

    let (code, out, err) = lockstep(&[
        "triggers",
        "uninstall",
        "--source",
        "vista",
        "--config",
        cfg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!capture_exists());
    psql(&format!(
        "INSERT INTO {schema}.appointments VALUES (446, 'East')"
    ));

    // A table without a primary key is refused, and nothing is installed.
    let bad = cfg_for("\"appointments\", \"notes\"");
    let (code, _, err) = lockstep(&["triggers", "install", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("`notes` has no primary key"), "{err}");
    assert!(!capture_exists());
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
}
