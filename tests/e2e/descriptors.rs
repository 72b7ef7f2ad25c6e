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

/// Asserts that no open failed for want of a descriptor (the agent's own, not a tail
/// file's: those wait for a slot instead).
fn assert_no_emfile(log: &str) {
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Too many open files"))
        .take(5)
        .collect();
    assert!(
        failed.is_empty(),
        "no open failed for lack of descriptors:\n{}",
        failed.join("\n")
    );
}

fn log_tail(w: &World) -> String {
    let log = agent_log(w);
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn write_lines(path: &Path, f: u64, from: u64, to: u64) {
    append(path, (from..to).map(|n| rec(f, n)));
}

/// A world with the admin endpoint and `files` change files of `lines` lines each,
/// named by `name` in its logs directory; and the lines written to each file.
fn files_world(
    files: u64,
    lines: u64,
    name: impl Fn(u64) -> String,
) -> (World, BTreeMap<u64, u64>) {
    let mut w = World::new();
    w.with_admin();
    let mut want = BTreeMap::new();
    for f in 0..files {
        write_lines(&w.logs().join(name(f)), f, 0, lines);
        want.insert(f, lines);
    }
    (w, want)
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
    const FILES: u64 = 2000;
    let (w, mut want) = files_world(FILES, 5, |f| format!("d-{f:04}.log"));
    let logs = w.logs();
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
    assert_no_emfile(&log);
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

/// After a file of 3 lines was replaced by one of 5 that starts with the same 3: all 8
/// arrive, the new file's under new ids.
async fn check_replaced_read_whole(w: &World, agent: &mut Agent) {
    assert_eq!(
        w.wait_count(8, Duration::from_secs(60)).await,
        8,
        "{}",
        log_tail(w)
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

/// Starts the agent on `*.log` with `close_idle = "1s"`.
fn close_idle_agent(w: &World) -> Agent {
    let cfg = w.config_with(&w.tail_source(
        "vista",
        "*.log",
        "table = \"t\"\nkey = [\"f\", \"n\"]\nclose_idle = \"1s\"",
    ));
    w.agent(&cfg)
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
    let names = ["a", "b", "c", "d", "e"];
    let (w, mut want) = files_world(5, 3, |f| format!("{}.log", names[f as usize]));
    let logs = w.logs();
    let mut agent = close_idle_agent(&w);
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
    let mut agent = close_idle_agent(&w);
    assert_eq!(w.wait_count(3, Duration::from_secs(60)).await, 3);
    wait_all_closed(&w, 1).await;
    let reused = replace_in_same_inode(&p, |c| write_lines(c, 3, 0, 5));
    eprintln!("d.log: inode number reused: {reused}");
    check_replaced_read_whole(&w, &mut agent).await;
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
    check_replaced_read_whole(&w, &mut agent).await;
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
    const FILES: u64 = 10;
    const NOFILE: u64 = 128;
    let (w, mut want) = files_world(FILES, 5, |f| format!("x-{f}.log"));
    let logs = w.logs();
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

/// `start_at = "end"` at the very first start, with more files than descriptors: every
/// file present then starts after its last complete line, also the ones that had to wait
/// for a descriptor at the first scan (each ends in a partial line, so the files opened
/// first cannot be closed before they are read). Only what is written after the start
/// arrives: the completed last line of each file, once.
#[tokio::test]
async fn start_at_end_holds_for_files_that_waited_for_a_descriptor_at_the_first_start() {
    let mut w = World::new();
    w.with_admin();
    let logs = w.logs();
    const FILES: u64 = 100;
    for f in 0..FILES {
        let p = logs.join(format!("s-{f:03}.log"));
        write_lines(&p, f, 0, 3);
        // The start of line 3, not finished yet.
        let partial = rec(f, 3);
        let (a, _) = partial.split_at(10);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut h| std::io::Write::write_all(&mut h, a.as_bytes()))
            .unwrap();
    }
    let cfg = w.config_with(&w.tail_source(
        "vista",
        "s-*.log",
        "table = \"t\"\nkey = [\"f\", \"n\"]\nstart_at = \"end\"",
    ));
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), 64);
    wait_for("every file to be followed", Duration::from_secs(60), || {
        w.status()["sources"]["vista"]["files"]
            .as_array()
            .is_some_and(|a| a.len() == FILES as usize)
    })
    .await;
    for f in 0..FILES {
        let p = logs.join(format!("s-{f:03}.log"));
        // The rest of line 3, and its end.
        let rest = format!("{}\n", &rec(f, 3)[10..]);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut h| std::io::Write::write_all(&mut h, rest.as_bytes()))
            .unwrap();
    }
    // Everything that could arrive: the lines from before the start too.
    let got = w.wait_count(FILES * 4, Duration::from_secs(20)).await;
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    let msgs = w.messages().await;
    let before: Vec<(u64, u64)> = msgs
        .iter()
        .map(|m| {
            (
                m.field("f").as_u64().expect("f"),
                m.field("n").as_u64().expect("n"),
            )
        })
        .filter(|(_, n)| *n < 3)
        .collect();
    assert!(
        before.is_empty(),
        "{} line(s) from before the start were sent ({got} events), of {} file(s), e.g. {:?}",
        before.len(),
        before
            .iter()
            .map(|(f, _)| f)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        &before[..before.len().min(5)]
    );
    // Each file's line 3 once: the line finished after the start.
    let want: BTreeMap<u64, u64> = (0..FILES).map(|f| (f, 1)).collect();
    let mut got: BTreeMap<u64, u64> = BTreeMap::new();
    for m in &msgs {
        assert_eq!(m.field("n").as_u64(), Some(3), "only line 3");
        *got.entry(m.field("f").as_u64().expect("f")).or_default() += 1;
    }
    assert_eq!(got, want, "line 3 of every file, once");
}

/// Two tail sources share the budget of open files (`ulimit -n 64`: 48 for the tail
/// sources). One follows 60 files that are all written to without pause, so none is ever
/// idle; the other follows one quiet file. The quiet source's file must still be read
/// while the busy one is busy: a source may not keep every descriptor for itself.
#[tokio::test]
async fn a_busy_tail_source_does_not_starve_another_of_descriptors() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut w = World::new();
    w.with_admin();
    let logs = w.logs();
    const BUSY: u64 = 60;
    for f in 0..BUSY {
        write_lines(&logs.join(format!("busy-{f:02}.log")), f, 0, 1);
    }
    let cfg = w.config_with(&format!(
        "{}{}",
        w.tail_source("busy", "busy-*.log", "table = \"t\"\nkey = [\"f\", \"n\"]"),
        w.tail_source(
            "quiet",
            "quiet-*.log",
            "table = \"q\"\nkey = [\"f\", \"n\"]"
        )
    ));
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), 64);
    assert_eq!(w.wait_count(BUSY, Duration::from_secs(60)).await, BUSY);
    // Every busy file is written to every 50 ms from now on.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, logs) = (stop.clone(), logs.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                for f in 0..BUSY {
                    write_lines(&logs.join(format!("busy-{f:02}.log")), f, n, n + 1);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    // Let the busy source take what it can, then the quiet file appears.
    wait_for(
        "the busy files to be written",
        Duration::from_secs(30),
        || {
            w.status()["sources"]["busy"]["events_sent"]
                .as_u64()
                .is_some_and(|n| n >= BUSY * 5)
        },
    )
    .await;
    write_lines(&logs.join("quiet-0.log"), 1000, 0, 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut quiet = 0;
    while std::time::Instant::now() < deadline {
        quiet = w.status()["sources"]["quiet"]["events_sent"]
            .as_u64()
            .unwrap_or(0);
        if quiet >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    let st = w.status();
    assert_eq!(
        quiet,
        5,
        "the quiet source read {quiet} of 5 lines in 60 s while the busy one was busy (busy files open: {}, quiet waiting: {})\n{}",
        st["sources"]["busy"]["files_open"],
        st["sources"]["quiet"]["files_waiting"],
        log_tail(&w)
    );
    let mut want: BTreeMap<u64, u64> = (0..BUSY).map(|f| (f, written)).collect();
    want.insert(1000, 5);
    let total: u64 = want.values().sum();
    assert_eq!(w.wait_count(total, Duration::from_secs(120)).await, total);
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    check_files(&w, &w.messages().await, &want);
}

/// A file truncated twice by the real logrotate's `copytruncate` while the agent was
/// stopped, that waits for a descriptor at the next start (40 files that all grew while
/// stopped, `ulimit -n 64`: 32 open at once, none closable before it is read): the rest
/// of the checkpointed generation is read from the older copy, and the generation in
/// the newer copy, never seen, is read whole, as for a file opened at the first scan.
#[tokio::test]
async fn a_file_copytruncated_twice_while_stopped_that_waits_for_a_descriptor_loses_nothing() {
    let mut w = World::new();
    w.with_admin();
    let logs = w.logs();
    const FILES: u64 = 40;
    let path = |f: u64| logs.join(format!("c-{f:02}.log"));
    for f in 0..FILES {
        write_lines(&path(f), f, 0, 3);
    }
    let cfg =
        w.config_with(&w.tail_source("vista", "c-*.log", "table = \"t\"\nkey = [\"f\", \"n\"]"));
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), 64);
    assert_eq!(
        w.wait_count(FILES * 3, Duration::from_secs(60)).await,
        FILES * 3
    );
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    let mut want: BTreeMap<u64, u64> = (0..FILES).map(|f| (f, 5)).collect();
    for f in 0..FILES {
        write_lines(&path(f), f, 3, 5);
    }
    // The last file by name (opened last): copytruncate, 2 lines, copytruncate, 2 lines.
    let last = path(FILES - 1);
    let conf = w.dir().join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{} {{\n    rotate 10\n    copytruncate\n    missingok\n    nomail\n}}\n",
            last.display()
        ),
    )
    .unwrap();
    let state = w.dir().join("logrotate.state");
    let rotate = || {
        let out = std::process::Command::new("/usr/sbin/logrotate")
            .arg("-f")
            .arg("-s")
            .arg(&state)
            .arg(&conf)
            .output()
            .expect("run logrotate");
        assert!(out.status.success(), "logrotate: {out:?}");
    };
    rotate();
    write_lines(&last, FILES - 1, 5, 7);
    rotate();
    write_lines(&last, FILES - 1, 7, 9);
    want.insert(FILES - 1, 9);
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), 64);
    let total: u64 = FILES * 3 + want.values().map(|n| n - 3).sum::<u64>();
    let got = w.wait_count(total, Duration::from_secs(60)).await;
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    assert!(
        agent_log(&w).contains("wait for a file descriptor"),
        "files waited for a descriptor at the start"
    );
    assert_eq!(got, total, "{}", log_tail(&w));
    check_files(&w, &w.messages().await, &want);
}

/// One rotation scheme of the real logrotate for [`closed_file_rotations`].
fn logrotate_conf(live: &Path, opts: &[&str]) -> String {
    format!(
        "{} {{\n    rotate 100\n    missingok\n    ifempty\n    nomail\n    {}\n}}\n",
        live.display(),
        opts.join("\n    ")
    )
}

/// A file closed while idle (`close_idle = "1s"`) is written to and at once rotated by
/// the real logrotate, before the agent's next look, six times, with a glob that matches
/// the rotations (`app.log*`): every line arrives once, in order.
async fn closed_file_rotations(opts: &[&str]) {
    let mut w = World::new();
    w.with_admin();
    let logs = w.logs();
    let live = logs.join("app.log");
    write_lines(&live, 0, 0, 3);
    let cfg = w.config_with(&w.tail_source(
        "vista",
        "app.log*",
        "table = \"t\"\nkey = [\"f\", \"n\"]\nclose_idle = \"1s\"",
    ));
    let conf = w.dir().join("logrotate.conf");
    std::fs::write(&conf, logrotate_conf(&live, opts)).unwrap();
    let state = w.dir().join("logrotate.state");
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(3, Duration::from_secs(60)).await, 3);
    let mut n = 3;
    for _ in 0..6 {
        wait_for("the files to be closed", Duration::from_secs(60), || {
            let s = w.status();
            s["sources"]["vista"]["files"].as_array().is_some_and(|a| {
                !a.is_empty() && a.iter().all(|x| x["open"] == serde_json::json!(false))
            })
        })
        .await;
        write_lines(&live, 0, n, n + 3);
        n += 3;
        let out = std::process::Command::new("/usr/sbin/logrotate")
            .arg("-f")
            .arg("-s")
            .arg(&state)
            .arg(&conf)
            .output()
            .expect("run logrotate");
        assert!(out.status.success(), "logrotate: {out:?}");
        if opts.contains(&"dateext") {
            // dateext names rotations by the second: one rotation a second.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    let got = w.wait_count(n, Duration::from_secs(30)).await;
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    assert_eq!(got, n, "{}", log_tail(&w));
    check_files(&w, &w.messages().await, &BTreeMap::from([(0, n)]));
}

#[tokio::test]
async fn closed_file_copytruncated_with_a_glob_matching_the_copies() {
    closed_file_rotations(&["copytruncate"]).await;
}

#[tokio::test]
async fn closed_file_rotated_and_compressed_at_once() {
    closed_file_rotations(&["create", "compress"]).await;
}

#[tokio::test]
async fn closed_file_rotated_with_dateext_and_delaycompress() {
    closed_file_rotations(&[
        "create",
        "dateext",
        "dateformat -%Y%m%d-%H%M%S",
        "compress",
        "delaycompress",
    ])
    .await;
}

/// 200 files under `ulimit -n 64`, all closed once idle; then 100 of them are each
/// written to, renamed out of the globs (`x-N.log` to `x-N.log.1`, in the same
/// directory) and written to again, all at once. The watcher's urgent opens and the
/// reopening of the closed files by their inode must not take the descriptors the rest
/// of the agent needs (a directory listing, a checkpoint), and a file whose directory
/// cannot be listed is not taken for deleted: every line arrives once, in order.
#[tokio::test]
async fn closed_files_renamed_out_of_the_globs_at_once_under_ulimit_64_lose_nothing() {
    const FILES: u64 = 200;
    let (w, mut want) = files_world(FILES, 3, |f| format!("x-{f:03}.log"));
    let logs = w.logs();
    let path = |f: u64| logs.join(format!("x-{f:03}.log"));
    let cfg =
        w.config_with(&w.tail_source("vista", "x-*.log", "table = \"t\"\nkey = [\"f\", \"n\"]"));
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), 64);
    assert_eq!(
        w.wait_count(FILES * 3, Duration::from_secs(120)).await,
        FILES * 3,
        "{}",
        log_tail(&w)
    );
    wait_all_closed(&w, FILES as usize).await;
    for f in 0..FILES / 2 {
        write_lines(&path(f), f, 3, 4);
        let rotated = logs.join(format!("x-{f:03}.log.1"));
        std::fs::rename(path(f), &rotated).unwrap();
        write_lines(&rotated, f, 4, 5);
        want.insert(f, 5);
    }
    let total: u64 = want.values().sum();
    // Every rotated file read and dropped: only the 100 others are followed.
    wait_for(
        "the rotated files to be done with",
        Duration::from_secs(60),
        || {
            w.status()["sources"]["vista"]["files"]
                .as_array()
                .is_some_and(|a| a.len() == (FILES / 2) as usize)
        },
    )
    .await;
    let got = w.wait_count(total, Duration::from_secs(10)).await;
    assert_eq!(agent.stop(), Some(0), "{}", log_tail(&w));
    let log = agent_log(&w);
    assert_eq!(
        got,
        total,
        "{} file(s) taken for deleted; {} 'Too many open files' in the log",
        log.matches("was deleted (or moved to another directory) while closed")
            .count(),
        log.matches("Too many open files").count()
    );
    check_files(&w, &w.messages().await, &want);
    assert_no_emfile(&log);
}

/// The admin endpoint out of descriptors (idle connections hold them all): it says so,
/// pauses between tries instead of spinning on the error, and answers again once they
/// are gone, while the source goes on delivering.
#[tokio::test]
async fn an_admin_endpoint_out_of_descriptors_pauses_and_recovers() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config("table = \"appointments\"\nkey = [\"id\"]");
    let file = w.logs().join("changes.log");
    append(&file, (0..100).map(line));
    let mut agent = Agent::start_nofile(&cfg, &w.dir().join("agent.log"), 64);
    assert_eq!(w.wait_count(100, Duration::from_secs(60)).await, 100);
    let pid = agent.pid().expect("running");
    let port = w.admin_port.expect("admin");
    // Idle connections: the agent holds each until its 5-second read timeout.
    let held: Vec<std::net::TcpStream> = (0..120)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(held.len() > 64, "only {} connections made", held.len());
    wait_for(
        "the agent to report that it cannot accept",
        Duration::from_secs(30),
        || agent_log(&w).contains("admin endpoint: cannot accept a connection"),
    )
    .await;
    // While out of descriptors: CPU time spent against the wall time that passed.
    let cpu = || cpu_ticks(pid);
    let (t0, c0) = (std::time::Instant::now(), cpu());
    std::thread::sleep(Duration::from_secs(2));
    let (wall, used) = (t0.elapsed(), cpu() - c0);
    let ticks = wall.as_secs_f64() * 100.0;
    assert!(
        (used as f64) < ticks / 2.0,
        "the accept loop spins: {used} CPU ticks in {ticks:.0} ticks of wall time"
    );
    drop(held);
    append(&file, (100..200).map(line));
    assert_eq!(w.wait_count(200, Duration::from_secs(60)).await, 200);
    wait_for(
        "the endpoint to answer again",
        Duration::from_secs(30),
        || w.admin("/healthz").0 == 200,
    )
    .await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_unique(&msgs, "id");
    assert_eq!(ints(&msgs, "id"), (0..200).collect::<Vec<i64>>());
}

/// User plus system CPU time of process `pid`, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (in parentheses): utime and stime are the 12th and
    // 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}
