//! ODBC connection strings as an operator copies them from a vendor manual: a trailing
//! `;`, spaces around keys and values, keys in any case, `{…}` values with `;` and `}}`
//! inside; lockstep hands each real driver (MariaDB, psqlODBC, SQLite) a string it takes,
//! also after adding its own options.

use crate::harness::*;

/// A MariaDB user with a password that needs braces, dropped at the end.
struct MariaUser<'a>(&'a Db, String);

impl Drop for MariaUser<'_> {
    fn drop(&mut self) {
        self.0
            .sql(&format!("DROP USER IF EXISTS '{}'@'%';", self.1));
    }
}

/// The lines `lockstep check` prints for source `name`.
fn check_lines<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("source {name} ");
    out.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[test]
fn odbc_connection_strings_are_taken_as_the_drivers_take_them() {
    let w = World::new();
    let maria = Db::new(Kind::Maria, &w, "connstr");
    let pg = Db::new(Kind::Pg, &w, "connstr");
    let lite = Db::new(Kind::Lite, &w, "connstr");
    maria.sql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY);");
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text);");
    lite.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);");
    let user = MariaUser(&maria, maria.name.clone());
    // `;` and `}` and `{` and `=`: written in braces as {p;w}}d{x=1}.
    maria.sql(&format!(
        "CREATE USER '{u}'@'%' IDENTIFIED BY 'p;w}}d{{x=1'; GRANT ALL ON {db}.* TO '{u}'@'%';",
        u = user.1,
        db = maria.name
    ));
    let db = &maria.name;
    let lite_file = lite.odbc();
    let lite_file = lite_file.split_once(';').unwrap().1;
    let sources = [
        // The string of the report: MariaDB refused it for its last `;`.
        (
            "trailing",
            "trigger",
            format!("DRIVER={{MariaDB Unicode}};SERVER=127.0.0.1;PORT=3306;DATABASE={db};UID=root;"),
            "tables = [\"t\"]",
        ),
        (
            "braced",
            "trigger",
            format!(
                " driver = {{MariaDB Unicode}} ;; server=127.0.0.1 ; Port = 3306;database={db};uid={};PWD={{p;w}}}}d{{x=1}} ;",
                user.1
            ),
            "tables = [\"u\"]",
        ),
        (
            "wrongpw",
            "trigger",
            format!(
                "DRIVER={{MariaDB Unicode}};SERVER=127.0.0.1;DATABASE={db};UID={};PWD={{p;w}}}}d{{x=2}};",
                user.1
            ),
            "tables = [\"u\"]",
        ),
        // psqlODBC through poll, which adds its streaming options: the search_path comes
        // from a braced ConnSettings with `;` inside, and the operator's own
        // UseDeclareFetch (in another case) is not doubled.
        (
            "pgpoll",
            "poll",
            format!(
                "Driver={{PostgreSQL Unicode}}; Server = 127.0.0.1;port=5432;DATABASE=test;Uid=postgres;\
                 connsettings={{SET search_path TO {};SET application_name TO 'a;b'}};usedeclarefetch=1;",
                pg.name
            ),
            "table = \"t\"",
        ),
        (
            "litepoll",
            "poll",
            format!(" driver = {{SQLite3}} ; {lite_file} ;"),
            "table = \"t\"",
        ),
    ];
    let text: String = sources
        .iter()
        .map(|(name, kind, conn, extra)| {
            format!(
                "[[source]]\nname = \"{name}\"\nkind = \"{kind}\"\nodbc = \"{conn}\"\n{extra}\n\n"
            )
        })
        .collect();
    let cfg = w.config_with(&text);
    let (_, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    for name in ["trailing", "braced"] {
        let lines = check_lines(&out, name);
        assert!(
            lines
                .first()
                .is_some_and(|l| l.contains("odbc (mariadb)") && l.contains(" ok ")),
            "source {name} connects:\n{out}{err}"
        );
    }
    // The password is really checked: one character off is refused.
    let wrong = check_lines(&out, "wrongpw");
    assert!(
        wrong.first().is_some_and(|l| l.contains("FAIL")),
        "{out}{err}"
    );
    for name in ["pgpoll", "litepoll"] {
        let lines = check_lines(&out, name);
        assert!(
            lines
                .first()
                .is_some_and(|l| l.contains(" ok ") && l.contains("key (id), 2 column(s)")),
            "source {name} reads its table:\n{out}{err}"
        );
    }
}
