//! ODBC connection strings, parsed by the rules of `SQLDriverConnect` and written back
//! in the one form every driver reads.
//!
//! A string is `key=value` attributes separated by `;`. Keys are case-insensitive and
//! may have spaces around them; a value may be written in braces (`PWD={a;b}}c}` is
//! `a;b}c`: inside braces a `;` is plain text and `}}` is one `}`). Empty attributes (a
//! trailing `;`, or `;;`) are nothing. Drivers differ in what else they take: MariaDB
//! Connector/ODBC 3.1 refuses a string that ends in `;` ("Error while parsing DSN"), so
//! lockstep never hands a driver the string as written: it parses it, adds its own
//! options only where the operator has not set them, and writes it back without empty
//! attributes, with braces where a value needs them.

use std::fmt;

/// One `key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attr {
    key: String,
    /// The value, braces and `}}` escapes undone.
    value: String,
    /// It was written in braces (kept so: `DRIVER={MariaDB Unicode}`).
    braced: bool,
}

/// A parsed connection string. Its `Display` is the string to hand a driver; it holds
/// secrets (`PWD`), so it is never logged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnString {
    attrs: Vec<Attr>,
}

impl ConnString {
    /// Parses `s`; the error says where and what is wrong, never the string itself (it
    /// may hold a password).
    pub fn parse(s: &str) -> Result<ConnString, String> {
        let s = s.trim_end_matches('\0');
        let b = s.as_bytes();
        let mut attrs = Vec::new();
        let mut i = 0;
        let skip_space = |i: &mut usize| {
            while *i < b.len() && b[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        loop {
            // Empty attributes and the spaces around them.
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b';') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let n = attrs.len() + 1;
            let start = i;
            while i < b.len() && b[i] != b'=' && b[i] != b';' {
                i += 1;
            }
            let key = s[start..i].trim();
            if i >= b.len() || b[i] == b';' {
                // Not named: it may be the tail of a password cut at a `;`.
                return Err(format!(
                    "attribute {n} of the ODBC connection string has no `=`: write each \
                     attribute as KEY=value, separated by `;`, and a value with a `;` in it \
                     in braces (PWD={{a;b}})"
                ));
            }
            if key.is_empty() {
                return Err(format!(
                    "attribute {n} of the ODBC connection string has no key before its `=`"
                ));
            }
            i += 1; // '='
            skip_space(&mut i);
            let (value, braced) = if b.get(i) == Some(&b'{') {
                i += 1;
                let mut v = String::new();
                let mut from = i;
                loop {
                    match b[i..].iter().position(|&c| c == b'}') {
                        None => {
                            return Err(format!(
                                "the value of `{key}` in the ODBC connection string opens a `{{` \
                                 that is never closed (inside braces, write `}}` as `}}}}`)"
                            ))
                        }
                        Some(p) => {
                            let close = i + p;
                            if b.get(close + 1) == Some(&b'}') {
                                v.push_str(&s[from..=close]);
                                i = close + 2;
                                from = i;
                            } else {
                                v.push_str(&s[from..close]);
                                i = close + 1;
                                break;
                            }
                        }
                    }
                }
                skip_space(&mut i);
                if i < b.len() && b[i] != b';' {
                    return Err(format!(
                        "the value of `{key}` in the ODBC connection string goes on after its \
                         closing `}}`: put a `;` after the `}}` (inside braces, write `}}` as `}}}}`)"
                    ));
                }
                (v, true)
            } else {
                let start = i;
                while i < b.len() && b[i] != b';' {
                    i += 1;
                }
                (s[start..i].trim().to_owned(), false)
            };
            attrs.push(Attr {
                key: key.to_owned(),
                value,
                braced,
            });
        }
        Ok(ConnString { attrs })
    }

    /// The value of `key` (any case), the last one when it is given twice (as drivers
    /// read it).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .rev()
            .find(|a| a.key.eq_ignore_ascii_case(key))
            .map(|a| a.value.as_str())
    }

    /// Adds `key=value` unless `key` (any case) is there already.
    pub fn set_default(&mut self, key: &str, value: &str) {
        if self.get(key).is_none() {
            self.attrs.push(Attr {
                key: key.to_owned(),
                value: value.to_owned(),
                braced: false,
            });
        }
    }

    /// The keys given an empty value (`PASSWORD=`), which some drivers refuse.
    pub fn empty_keys(&self) -> Vec<&str> {
        self.attrs
            .iter()
            .filter(|a| a.value.is_empty() && !a.braced)
            .map(|a| a.key.as_str())
            .collect()
    }
}

impl fmt::Display for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, a) in self.attrs.iter().enumerate() {
            if n > 0 {
                f.write_str(";")?;
            }
            let v = &a.value;
            let needs = a.braced
                || v.contains([';', '{', '}'])
                || v.starts_with(|c: char| c.is_whitespace())
                || v.ends_with(|c: char| c.is_whitespace());
            if needs {
                write!(f, "{}={{{}}}", a.key, v.replace('}', "}}"))?;
            } else {
                write!(f, "{}={v}", a.key)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(s: &str) -> String {
        ConnString::parse(s).unwrap().to_string()
    }

    #[test]
    fn empty_attributes_and_spaces_go() {
        let want = "DRIVER={MariaDB Unicode};SERVER=127.0.0.1;UID=root";
        assert_eq!(
            round("DRIVER={MariaDB Unicode};SERVER=127.0.0.1;UID=root;"),
            want
        );
        assert_eq!(
            round("DRIVER={MariaDB Unicode};SERVER=127.0.0.1;UID=root"),
            want
        );
        assert_eq!(
            round(" DRIVER = {MariaDB Unicode} ;; SERVER= 127.0.0.1 ;UID =root ; ;\0"),
            want
        );
        assert_eq!(round(""), "");
        assert_eq!(round(" ; ;"), "");
        assert_eq!(round("DSN=x"), "DSN=x");
    }

    #[test]
    fn braced_values_keep_semicolons_braces_and_spaces() {
        let c = ConnString::parse("Driver={PostgreSQL Unicode};pwd={a;b}}c{d} ;Uid=x y").unwrap();
        assert_eq!(c.get("PWD"), Some("a;b}c{d"));
        assert_eq!(c.get("driver"), Some("PostgreSQL Unicode"));
        assert_eq!(c.get("UID"), Some("x y"));
        assert_eq!(
            c.to_string(),
            "Driver={PostgreSQL Unicode};pwd={a;b}}c{d};Uid=x y"
        );
        // Written back, it parses to the same attributes.
        assert_eq!(ConnString::parse(&c.to_string()).unwrap(), c);
        assert_eq!(
            ConnString::parse("PWD={ padded }").unwrap().get("pwd"),
            Some(" padded ")
        );
        assert_eq!(ConnString::parse("PWD={}").unwrap().get("pwd"), Some(""));
    }

    #[test]
    fn keys_are_found_in_any_case_and_defaults_do_not_double() {
        let mut c = ConnString::parse("DSN=pg;usedeclarefetch=0;").unwrap();
        c.set_default("UseDeclareFetch", "1");
        c.set_default("Fetch", "100");
        assert_eq!(c.to_string(), "DSN=pg;usedeclarefetch=0;Fetch=100");
        // A key that merely contains another is not it.
        let mut c = ConnString::parse("DSN=pg;UseDeclareFetch=1").unwrap();
        c.set_default("Fetch", "100");
        assert_eq!(c.get("fetch"), Some("100"));
        // A value that names a key is not that key.
        let mut c = ConnString::parse("DSN=pg;PWD={Fetch=1;}").unwrap();
        c.set_default("Fetch", "7");
        assert_eq!(c.get("Fetch"), Some("7"));
        // Given twice, the last one counts.
        let c = ConnString::parse("UID=a;uid=b").unwrap();
        assert_eq!(c.get("UID"), Some("b"));
    }

    #[test]
    fn malformed_strings_are_refused_without_their_secrets() {
        let e = ConnString::parse("DSN=x;PWD={s3cret").unwrap_err();
        assert!(e.contains("never closed"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = ConnString::parse("DSN=x;PWD={s3c}ret}").unwrap_err();
        assert!(e.contains("goes on after"), "{e}");
        assert!(!e.contains("s3c"), "{e}");
        let e = ConnString::parse("DSN=x;PWD=s3c;ret;UID=a").unwrap_err();
        assert!(e.contains("attribute 3 of"), "{e}");
        assert!(!e.contains("ret"), "{e}");
        let e = ConnString::parse("=x").unwrap_err();
        assert!(e.contains("no key"), "{e}");
    }

    proptest::proptest! {
        /// Any attributes, written back, parse to the same keys and values; and any
        /// text at all parses or is refused without a panic.
        #[test]
        fn written_back_strings_parse_to_the_same_attributes(
            attrs in proptest::collection::vec(("[A-Za-z][A-Za-z_ ]{0,8}", "[ -~]{0,12}"), 0..6),
            junk in "[ -~{};=]{0,40}",
        ) {
            let _ = ConnString::parse(&junk);
            let mut c = ConnString::default();
            for (k, v) in &attrs {
                c.attrs.push(Attr { key: k.trim().to_owned(), value: v.clone(), braced: false });
            }
            let again = ConnString::parse(&c.to_string()).unwrap();
            let got: Vec<(&str, &str)> =
                again.attrs.iter().map(|a| (a.key.as_str(), a.value.as_str())).collect();
            let want: Vec<(&str, &str)> =
                c.attrs.iter().map(|a| (a.key.as_str(), a.value.as_str())).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn empty_values_are_named() {
        let c = ConnString::parse("DSN=x;PASSWORD=;PWD={}").unwrap();
        assert_eq!(c.empty_keys(), ["PASSWORD"]);
    }
}
