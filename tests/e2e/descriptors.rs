//! File descriptors: a tail source that follows more files than it may hold open, and
//! files closed while idle (`close_idle`) that change, move or are replaced later.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;

/// A change line of file `f`, its `n`th.
fn rec(f: u64, n: u64) -> String {
    format!(r#"{{"f":{f},"n":{n},"text":"file {f} line {n}"}}"#)
}

/// Checks that every file's lines arrived once each, in order: `want` maps a file to the
/// number of lines written to it.
fn check_files(w: &World, msgs: &[Msg], want: &BTreeMap<u64, u64>) {
    let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for m in msgs {
        let f = m.field("f").as_u64().expect("f");
        let n = m.field("n").as_u64().expect("n");
        got.entry(f).or_default().push(n);
    }
    let total: u64 = want.values().sum();
    assert_eq!(
        msgs.len() as u64,
        total,
        "events; files with a wrong count: {:?}\nagent log (tail):\n{}",
        want.iter()
            .filter(|(f, n)| got.get(f).map_or(0, |v| v.len() as u64) != **n)
            .take(10)
            .collect::<Vec<_>>(),
        log_tail(w)
    );
    for (f, n) in want {
        let ns = got.get(f).cloned().unwrap_or_default();
        assert_eq!(
            ns,
            (0..*n).collect::<Vec<_>>(),
            "file {f}: once each, in order"
        );
    }
    let mut ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), msgs.len(), "no duplicate message ids");
}

fn log_tail(w: &World) -> String {
    let log = agent_log(w);
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn write_lines(path: &Path, f: u64, from: u64, to: u64) {
    append(path, (from..to).map(|n| rec(f, n)));
}

/// 2,000 files under `ulimit -n 256`: the tail source may hold 192 of them open. Each file
/// is read to its end, closed to make room for the next, and opened again by path when
/// it grows: at the first start, at a restart on a checkpoint of 2,000 files that all
/// grew while the agent was stopped, and while it runs, when 100 of them are rotated by
/// a rename out of the globs and written to after the rename (the writer still has
/// them open) and new files take their names. Before `close_idle` the agent ran out of
/// descriptors: 10,070 events arrived for the first 10,000 lines.
#[tokio::test]
async fn two_thousand_files_under_ulimit_256_arrive_once_and_in_order() {
    let mut w = World::new();
    w.with_admin();
    let logs = w.logs();
    const FILES: u64 = 2000;
    let mut want = BTreeMap::new();
    for f in 0..FILES {
        write_lines(&logs.join(format!("d-{f:04}.log")), f, 0, 5);
        want.insert(f, 5);
    }
    let cfg =
        w.config_with(&w.tail_source("vista", "d-*.log", "table = \"t\"\nkey = [\"f\", \"n\"]"));
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), 256);
    let first = w.wait_count(FILES * 5, Duration::from_secs(240)).await;
    assert_eq!(first, FILES * 5, "{}", log_tail(&w));
    let pid = agent.pid().expect("running");
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(open_fds < 256, "{open_fds} descriptors open");
    // The status is published after each round's events are sent: wait for the round.
    wait_for("every file in the status", Duration::from_secs(30), || {
        w.status()["sources"]["vista"]["files"]
            .as_array()
            .map(Vec::len)
            == Some(FILES as usize)
    })
    .await;
    let open = w.status()["sources"]["vista"]["files_open"]
        .as_u64()
        .expect("files_open");
    assert!(
        open <= 192 + 32,
        "{open} files open of a budget of 192 (+ 32 for rotations)"
    );
    // Stopped, every file grows, and the agent starts again on a checkpoint of 2,000
    // files, still under 256 descriptors.
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    for f in 0..FILES {
        write_lines(&logs.join(format!("d-{f:04}.log")), f, 5, 8);
        *want.get_mut(&f).unwrap() = 8;
    }
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), 256);
    let second = w.wait_count(FILES * 8, Duration::from_secs(240)).await;
    assert_eq!(second, FILES * 8, "{}", log_tail(&w));
    // While it runs: every file grows; a hundred are rotated away and written to after
    // the rename, and a new file takes each rotated name.
    for f in 0..FILES {
        let p = logs.join(format!("d-{f:04}.log"));
        write_lines(&p, f, 8, 9);
        *want.get_mut(&f).unwrap() = 9;
        if f % 20 == 7 {
            let rotated = logs.join(format!("d-{f:04}.log.1"));
            std::fs::rename(&p, &rotated).unwrap();
            write_lines(&rotated, f, 9, 11);
            *want.get_mut(&f).unwrap() = 11;
            write_lines(&p, 10_000 + f, 0, 4);
            want.insert(10_000 + f, 4);
        }
    }
    let total: u64 = want.values().sum();
    w.wait_count(total, Duration::from_secs(240)).await;
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    // Counts each file's lines (and names the files that differ).
    check_files(&w, &w.messages().await, &want);
    let log = agent_log(&w);
    assert!(
        log.contains("wait for a file descriptor"),
        "the wait is logged"
    );
    assert!(
        !log.contains("Too many open files"),
        "no open failed for lack of descriptors:\n{}",
        log.lines()
            .filter(|l| l.contains("Too many open files"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Deletes `p` and writes `lines` to a new file that takes its inode number (the file
/// system reuses a freed number at once; other files made meanwhile may take it first, so
/// the new file is made under other names until one gets it, then renamed to `p`).
/// Returns whether the number was reused.
fn replace_in_same_inode(p: &Path, lines: impl Fn(&Path)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let old = std::fs::metadata(p).unwrap().ino();
    std::fs::remove_file(p).unwrap();
    // Made next to it, under names the globs do not match.
    let spare = |k: usize| p.with_extension(format!("spare{k}"));
    let mut reused = false;
    let mut made = 0;
    while made < 2000 {
        let c = spare(made);
        made += 1;
        std::fs::write(&c, "").unwrap();
        if std::fs::metadata(&c).unwrap().ino() == old {
            lines(&c);
            std::fs::rename(&c, p).unwrap();
            reused = true;
            break;
        }
    }
    for k in 0..made {
        let _ = std::fs::remove_file(spare(k));
    }
    if !reused {
        lines(p);
    }
    reused
}

/// Waits until the status shows every followed file closed.
async fn wait_all_closed(w: &World, files: usize) {
    wait_for(
        "the idle files to be closed",
        Duration::from_secs(60),
        || {
            let s = w.status();
            let f = &s["sources"]["vista"]["files"];
            f.as_array().is_some_and(|a| {
                a.len() == files && a.iter().all(|x| x["open"] == serde_json::json!(false))
            })
        },
    )
    .await;
}

/// Files closed after `close_idle` are opened again by path when they change: one grows,
/// one is renamed out of the globs and written to after the rename, one is truncated and
/// written again, one is deleted and a new file takes its name (and, on ext4, its inode
/// number: told apart by its birth time), one is renamed within the globs. Every line
/// arrives once, in order, under new ids where the content is new.
#[tokio::test]
async fn idle_files_are_closed_and_reopened_by_path_when_they_change() {
    let mut w = World::new();
    w.with_admin();
    let logs = w.logs();
    let names = ["a", "b", "c", "d", "e"];
    let mut want = BTreeMap::new();
    for (f, n) in names.iter().enumerate() {
        write_lines(&logs.join(format!("{n}.log")), f as u64, 0, 3);
        want.insert(f as u64, 3);
    }
    let cfg = w.config_with(&w.tail_source(
        "vista",
        "*.log",
        "table = \"t\"\nkey = [\"f\", \"n\"]\nclose_idle = \"1s\"",
    ));
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(15, Duration::from_secs(60)).await, 15);
    wait_all_closed(&w, 5).await;
    // a grows.
    write_lines(&logs.join("a.log"), 0, 3, 6);
    want.insert(0, 6);
    // b is rotated out of the globs, then written to by a writer that still has it.
    let b = logs.join("b.log");
    let mut writer = std::fs::OpenOptions::new().append(true).open(&b).unwrap();
    std::fs::rename(&b, logs.join("b.log.1")).unwrap();
    {
        use std::io::Write;
        let text: String = (3..7).map(|n| rec(1, n) + "\n").collect();
        writer.write_all(text.as_bytes()).unwrap();
    }
    want.insert(1, 7);
    // c is truncated and written again (a new generation: its lines are new).
    let c = logs.join("c.log");
    std::fs::write(&c, "").unwrap();
    write_lines(&c, 12, 0, 2);
    want.insert(12, 2);
    // d is deleted and a new file takes its name (often its inode number too).
    let d = logs.join("d.log");
    let old_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&d).unwrap());
    std::fs::remove_file(&d).unwrap();
    write_lines(&d, 13, 0, 4);
    want.insert(13, 4);
    let new_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&d).unwrap());
    eprintln!("d.log: inode {old_ino} then {new_ino}");
    // e is renamed within the globs and grows.
    let e = logs.join("e.log");
    std::fs::rename(&e, logs.join("e2.log")).unwrap();
    write_lines(&logs.join("e2.log"), 4, 3, 5);
    want.insert(4, 5);
    let total: u64 = want.values().sum();
    assert_eq!(
        w.wait_count(total, Duration::from_secs(60)).await,
        total,
        "{}",
        log_tail(&w)
    );
    // Closed again once idle (b.log.1 is dropped once read and `rotate_wait` is over),
    // and a later change is still seen.
    wait_all_closed(&w, 4).await;
    write_lines(&logs.join("a.log"), 0, 6, 8);
    want.insert(0, 8);
    let total = total + 2;
    assert_eq!(w.wait_count(total, Duration::from_secs(60)).await, total);
    assert_eq!(agent.stop(), Some(0));
    check_files(&w, &w.messages().await, &want);
}

/// A closed file deleted and written again under its name, starting with the very same
/// bytes (a job that rewrites its file whole), takes the old file's inode number (ext4
/// reuses it at once): the device, inode and first bytes all match. Its birth time does
/// not, so it is read from byte 0 under a new generation, not from the old offset.
#[tokio::test]
async fn a_closed_file_replaced_in_its_inode_with_the_same_first_bytes_is_read_whole() {
    let mut w = World::new();
    w.with_admin();
    let p = w.logs().join("d.log");
    write_lines(&p, 3, 0, 3);
    let cfg = w.config_with(&w.tail_source(
        "vista",
        "*.log",
        "table = \"t\"\nkey = [\"f\", \"n\"]\nclose_idle = \"1s\"",
    ));
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(3, Duration::from_secs(60)).await, 3);
    wait_all_closed(&w, 1).await;
    let reused = replace_in_same_inode(&p, |c| write_lines(c, 3, 0, 5));
    eprintln!("d.log: inode number reused: {reused}");
    assert_eq!(
        w.wait_count(8, Duration::from_secs(60)).await,
        8,
        "{}",
        log_tail(&w)
    );
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    let ns: Vec<u64> = msgs
        .iter()
        .map(|m| m.field("n").as_u64().unwrap())
        .collect();
    assert_eq!(
        ns,
        [0, 1, 2, 0, 1, 2, 3, 4],
        "the old file, then the new one whole"
    );
    let mut ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "new ids for the new file");
}

/// The same while the agent is stopped: the checkpoint keeps each file's birth time, so
/// a file deleted while stopped whose inode number a new file with the same first bytes
/// took is not resumed at the old offset (a known edge until the birth time was kept).
#[tokio::test]
async fn a_file_replaced_in_its_inode_while_stopped_is_read_whole() {
    let w = World::new();
    let p = w.logs().join("d.log");
    write_lines(&p, 3, 0, 3);
    let cfg = w.config("table = \"t\"\nkey = [\"f\", \"n\"]");
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(3, Duration::from_secs(60)).await, 3);
    assert_eq!(agent.stop(), Some(0));
    let reused = replace_in_same_inode(&p, |c| write_lines(c, 3, 0, 5));
    eprintln!("d.log: inode number reused: {reused}");
    let mut agent = w.agent(&cfg);
    assert_eq!(
        w.wait_count(8, Duration::from_secs(60)).await,
        8,
        "{}",
        log_tail(&w)
    );
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    let ns: Vec<u64> = msgs
        .iter()
        .map(|m| m.field("n").as_u64().unwrap())
        .collect();
    assert_eq!(
        ns,
        [0, 1, 2, 0, 1, 2, 3, 4],
        "the old file, then the new one whole"
    );
    let mut ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "new ids for the new file");
}

/// A file renamed out of the globs is read to its end and dropped after `rotate_wait`;
/// when it comes back into them later (renamed back, or its rename event reached the
/// watcher only after it was dropped: seen with 2,000 files under `ulimit -n 256`), it is
/// the same file (same inode and birth time) and goes on from where it was. Before, its
/// dropped entry made it a new generation and every line arrived twice.
#[tokio::test]
async fn a_dropped_file_that_comes_back_into_the_globs_goes_on_where_it_was() {
    let w = World::new();
    let logs = w.logs();
    write_lines(&logs.join("a.log"), 1, 0, 4);
    let cfg = w.config("table = \"t\"\nkey = [\"f\", \"n\"]");
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(4, Duration::from_secs(60)).await, 4);
    std::fs::rename(logs.join("a.log"), logs.join("a.old")).unwrap();
    wait_for("a.old to be dropped", Duration::from_secs(30), || {
        agent_log(&w).contains("done with")
    })
    .await;
    // Its checkpoint entry is retired once acknowledged: wait for that write.
    let cp = w.dir().join("state/checkpoints/vista.json");
    wait_for("the entry to be retired", Duration::from_secs(30), || {
        std::fs::read_to_string(&cp).is_ok_and(|t| t.contains("retired_ms"))
    })
    .await;
    std::fs::rename(logs.join("a.old"), logs.join("a2.log")).unwrap();
    write_lines(&logs.join("a2.log"), 1, 4, 6);
    assert_eq!(
        w.wait_count(6, Duration::from_secs(60)).await,
        6,
        "{}",
        log_tail(&w)
    );
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    let want = BTreeMap::from([(1, 6)]);
    check_files(&w, &msgs, &want);
}

/// The tail sources keep a share of `RLIMIT_NOFILE` for the rest of the agent, but the
/// rest may take it all: many ODBC connections, a driver's own files, or, here, clients
/// that connect to the admin endpoint and hold their connections. A scan of the globs
/// then cannot list the directory. The files in it were taken for rotated away, dropped
/// after `rotate_wait` and found again once descriptors were free, as new generations:
/// every line was read again and sent under new message ids. A directory that cannot be
/// listed keeps its files as they were.
#[tokio::test]
async fn a_scan_without_descriptors_keeps_the_files_it_could_not_list() {
    use std::io::Write;
    let mut w = World::new();
    w.with_admin();
    let logs = w.logs();
    const FILES: u64 = 10;
    const NOFILE: u64 = 128;
    let mut want = BTreeMap::new();
    for f in 0..FILES {
        write_lines(&logs.join(format!("x-{f}.log")), f, 0, 5);
        want.insert(f, 5);
    }
    // `rotate_wait = "0s"`: a file taken for rotated away is dropped at once.
    let cfg = w.config_with(&format!(
        "[[source]]\nname = \"vista\"\nkind = \"tail\"\npaths = [\"{}/x-*.log\"]\n\
         stat_interval = \"200ms\"\nrotate_wait = \"0s\"\ntable = \"t\"\nkey = [\"f\", \"n\"]\n",
        logs.display()
    ));
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), NOFILE);
    assert_eq!(
        w.wait_count(FILES * 5, Duration::from_secs(60)).await,
        FILES * 5
    );
    let pid = agent.pid().expect("running");
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    // Connections to the admin endpoint take every descriptor the agent has left; those
    // still in the listen backlog take any descriptor freed meanwhile. Each sends a byte
    // now and then, so that the endpoint keeps waiting for its request.
    let port = w.admin_port.expect("admin port");
    let log_len = agent_log(&w).len();
    let since = |w: &World| agent_log(w)[log_len..].to_owned();
    let mut held: Vec<std::net::TcpStream> = (0..NOFILE)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let keep_alive = |held: &mut Vec<std::net::TcpStream>| {
        for c in held.iter_mut() {
            // A connection the agent closed is of no more use: ignored.
            let _ = c.write_all(b"G");
        }
    };
    // A scan cannot list the directory (the old code took the files for rotated away and,
    // with `rotate_wait = "0s"`, dropped them at once).
    let mut full = false;
    wait_for(
        "a scan without a descriptor left",
        Duration::from_secs(60),
        || {
            keep_alive(&mut held);
            full |= fds() >= NOFILE;
            let log = since(&w);
            full && (log.contains("cannot list") || log.contains("rotated away or deleted"))
        },
    )
    .await;
    drop(held);
    // Descriptors are free again: a scan lists the directory (the old code found the
    // files again as new ones).
    wait_for(
        "a scan that lists the directory",
        Duration::from_secs(60),
        || {
            let log = since(&w);
            log.contains("can be listed again") || log.contains("following")
        },
    )
    .await;
    // Descriptors are free again: every file grows and is read on from where it was.
    for f in 0..FILES {
        write_lines(&logs.join(format!("x-{f}.log")), f, 5, 8);
        want.insert(f, 8);
    }
    let total: u64 = want.values().sum();
    assert_eq!(
        w.wait_count(total, Duration::from_secs(60)).await,
        total,
        "{}",
        log_tail(&w)
    );
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    check_files(&w, &w.messages().await, &want);
    let log = agent_log(&w);
    assert!(
        !log.contains("rotated away or deleted") && !log.contains("done with"),
        "no file was taken for gone:\n{}",
        log.lines()
            .filter(|l| l.contains("rotated away or deleted") || l.contains("done with"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
