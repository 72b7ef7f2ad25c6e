use super::*;
use std::io::Write;

#[test]
fn a_directory_that_cannot_be_listed_leaves_its_files_unknown() {
    let scan = Scan {
        found: Vec::new(),
        unlisted: vec![(PathBuf::from("/var/log/app"), io::ErrorKind::Other.into())],
    };
    assert!(scan.unknown(Path::new("/var/log/app/a.log")));
    assert!(scan.unknown(Path::new("/var/log/app/sub/a.log")));
    assert!(!scan.unknown(Path::new("/var/log/app2/a.log")));
    assert!(!scan.unknown(Path::new("/var/log/a.log")));
    assert!(!Scan::default().unknown(Path::new("/var/log/app/a.log")));
}

#[test]
fn fingerprint_waits_for_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"{\"id\":1").unwrap();
    let r = File::open(&p).unwrap();
    assert_eq!(fingerprint(&r).unwrap(), None);
    f.write_all(b"}\n{\"id\":2}").unwrap();
    let fp = fingerprint(&r).unwrap().unwrap();
    f.write_all(b"\n").unwrap();
    assert_eq!(
        fingerprint(&r).unwrap(),
        Some(fp),
        "growth after the first line does not change it"
    );
    // `{"id":1}\n{"id":2}\n`: with 17 bytes the second line is partial.
    assert_eq!(end_of_last_line(&r, 17).unwrap(), 9);
    assert_eq!(end_of_last_line(&r, 18).unwrap(), 18);
}

#[test]
fn head_tells_files_with_the_same_first_line_apart() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.csv");
    std::fs::write(&p, "id,status\n1,a\n").unwrap();
    let f = File::open(&p).unwrap();
    let h = Head::default().recheck(&f, 14).unwrap().unwrap();
    assert_eq!(h.len, 14);
    std::fs::write(&p, "id,status\n1,a\n2,b\n").unwrap();
    let h2 = h.recheck(&f, 18).unwrap().expect("grown, same first bytes");
    assert_eq!(h2.len, 18);
    // Truncated and rewritten with the same header, and longer than before.
    std::fs::write(&p, "id,status\n9,z\n8,y\n7,x\n").unwrap();
    assert_eq!(fingerprint(&f).unwrap(), fingerprint(&f).unwrap());
    assert_eq!(h2.recheck(&f, 22).unwrap(), None);
    // Shorter than the head: not the same file.
    std::fs::write(&p, "id,st").unwrap();
    assert_eq!(h2.recheck(&f, 5).unwrap(), None);
}

#[test]
fn rotated_names_and_compressed_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for n in [
        "app.log.1",
        "app.log-20261129",
        "app-20261129.log",
        "app.log.2.gz",
        "other.log",
        "app.log",
        // Other files whose names start as `app.log`'s does: no rotations of it.
        "apport.log",
        "apport.log.1",
        "app-eu.log",
        "app.log.bak",
        "app.logger.1",
    ] {
        std::fs::write(d.join(n), "x\n").unwrap();
    }
    let since = std::time::SystemTime::UNIX_EPOCH;
    let mut got: Vec<String> = rotated_since(&d.join("app.log"), since)
        .into_iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["app-20261129.log", "app.log-20261129", "app.log.1"]);
    // Times that tie: the older rotation first (made first, and numbered higher).
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    let tied = dir.path().join("tied");
    std::fs::create_dir(&tied).unwrap();
    for n in ["app.log.10", "app.log.2", "app.log.1"] {
        std::fs::write(tied.join(n), "x\n").unwrap();
        let f = File::options().write(true).open(tied.join(n)).unwrap();
        f.set_modified(t).unwrap();
    }
    let got: Vec<String> = rotated_since(&tied.join("app.log"), t)
        .into_iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(got, ["app.log.10", "app.log.2", "app.log.1"]);
    // Where the file system keeps no birth time, the numbers alone.
    let age = |n| rotation_age("app.log", n);
    assert!(age("app.log.10") < age("app.log.2") && age("app.log.2") < age("app.log.1"));
    assert_eq!(
        age("app.log-20261129"),
        age("app.log-20261130"),
        "dates: by name"
    );
    let g = Globs::new(&[format!("{}/app.log*", d.display())]);
    assert!(g.matches(&d.join("app.log.1")));
    assert!(!g.matches(&d.join("app.log.2.gz")), "compressed: skipped");
    assert!(!g.matches(&d.join("sub/app.log")));
}

#[test]
fn the_rest_of_a_file_is_found_in_its_gz_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text: String = (0..2000).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let live = d.join("app.log");
    std::fs::write(&live, &text).unwrap();
    let f = File::open(&live).unwrap();
    let head = Head::default()
        .recheck(&f, text.len() as u64)
        .unwrap()
        .unwrap();
    let gz = |name: &str, data: &str| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data.as_bytes()).unwrap();
        std::fs::write(d.join(name), e.finish().unwrap()).unwrap();
    };
    gz("app.log.2.gz", &text);
    gz("app.log.3.gz", "something else\n");
    gz("other.log.1.gz", &text);
    gz("apport.log.1.gz", &text);
    gz("app.log-eu.gz", &text);
    let fam: Vec<PathBuf> = gz_family(&d.join("app.log.1"))
        .unwrap()
        .into_iter()
        .map(|(_, p, _)| p)
        .collect();
    let mut fam: Vec<String> = fam
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    fam.sort();
    assert_eq!(fam, ["app.log.2.gz", "app.log.3.gz"]);
    assert_eq!(rotation_base("app.log-20261129-120000"), "app.log");
    assert_eq!(rotation_base("orders.csv"), "orders.csv");
    let from = 10_000;
    let g = find_gz(&d.join("app.log.1"), head, from, d, &[], None, &|| {})
        .unwrap()
        .unwrap();
    assert_eq!(g.gz, d.join("app.log.2.gz"));
    assert_eq!(g.len, text.len() as u64);
    let mut got = vec![0u8; text.len()];
    g.file.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(&got[..HEAD_MAX], &text.as_bytes()[..HEAD_MAX], "the head");
    assert_eq!(
        &got[from as usize..],
        &text.as_bytes()[from as usize..],
        "the rest"
    );
    // Read to its end already: nothing to recover.
    let len = text.len() as u64;
    assert!(find_gz(&live, head, len, d, &[], None, &|| {})
        .unwrap()
        .is_none());
    // An unknown head: nothing either.
    assert!(
        find_gz(&live, Head { len: 5, hash: 1 }, 0, d, &[], None, &|| {})
            .unwrap()
            .is_none()
    );
    // No temporary file is left behind.
    assert!(std::fs::read_dir(d).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".gunzip")));
}

#[test]
fn taken_gz_files_are_forgotten_once_deleted_or_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut taken = Vec::new();
    for n in ["a.log.1.gz", "a.log.2.gz", "a.log.3.gz"] {
        std::fs::write(d.join(n), "x").unwrap();
        let key = FileKey::of(&fs::metadata(d.join(n)).unwrap());
        taken.push((d.join(n), key));
    }
    std::fs::remove_file(d.join("a.log.3.gz")).unwrap();
    std::fs::rename(d.join("a.log.2.gz"), d.join("a.log.3.gz")).unwrap();
    prune_taken(&mut taken);
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].0, d.join("a.log.1.gz"));
}

#[test]
fn watch_roots() {
    assert_eq!(
        watch_root("/var/vista/changes*.log"),
        (PathBuf::from("/var/vista"), false)
    );
    assert_eq!(watch_root("/var/*/x.log"), (PathBuf::from("/var"), true));
    assert_eq!(
        watch_root("/var/log/app.log"),
        (PathBuf::from("/var/log"), false)
    );
}
