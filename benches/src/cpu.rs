//! CPU seconds of processes, from `/proc/<pid>/stat`.
//!
//! A server made of many processes (PostgreSQL: the postmaster and one backend per
//! connection, started and ended all the time) cannot be measured by summing the live
//! processes of its name before and after: a backend that ends in between takes its
//! time with it, and the difference can even be negative. What is cumulative is a
//! process tree: each live process's own time (`utime + stime`, all its threads, ended
//! ones included) plus the time of the children it has reaped (`cutime + cstime`, which
//! the kernel adds when the parent waits for a child, with that child's own reaped
//! children). The sum of both over the root and its live descendants only grows: a
//! child that ends moves from "live" to its parent's reaped time. (The one gap: a child
//! that ends and is reaped between the reading of its parent's line and its own is
//! missed by that one reading; a zombie not yet reaped is still listed, with its time.)
//!
//! MariaDB is one process with one thread per connection: its own time already
//! includes the ended threads, so the same tree sum is right for it too.

use std::collections::HashMap;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// The fields of one `/proc/<pid>/stat` line that CPU accounting needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub ppid: u32,
    /// `utime + stime`: the process's own time, all its threads.
    pub own: u64,
    /// `cutime + cstime`: the time of the children it has waited for.
    pub reaped: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and
/// may itself hold spaces and parentheses, so the fields are counted from its last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let (head, rest) = line.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    // After `)`: state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<i64>().ok();
    let ticks = |i: usize| u64::try_from(num(i)?).ok();
    Some(Stat {
        pid,
        ppid: u32::try_from(num(1)?).ok()?,
        own: ticks(11)? + ticks(12)?,
        reaped: ticks(13)? + ticks(14)?,
    })
}

/// Ticks of `root` and its live descendants among `procs`: each one's own time and the
/// time of the children it reaped. `None` when `root` is not among them.
pub fn tree_ticks(procs: &[Stat], root: u32) -> Option<u64> {
    let mut children: HashMap<u32, Vec<&Stat>> = HashMap::new();
    let mut top = None;
    for p in procs {
        if p.pid == root {
            top = Some(p);
        } else {
            children.entry(p.ppid).or_default().push(p);
        }
    }
    let mut stack = vec![top?];
    let mut sum = 0;
    while let Some(p) = stack.pop() {
        sum += p.own + p.reaped;
        if let Some(c) = children.get(&p.pid) {
            stack.extend(c.iter().copied());
        }
    }
    Some(sum)
}

/// Every process's line, read in one pass over `/proc`.
fn all_stats() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .collect()
}

/// CPU seconds so far of the process tree under `root` (see the module doc).
pub fn tree_secs(root: u32) -> Option<f64> {
    tree_ticks(&all_stats(), root).map(|t| t as f64 / TICKS)
}

/// CPU seconds so far of process `pid` itself (all its threads).
pub fn process_secs(pid: u32) -> Option<f64> {
    let s = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some(s.own as f64 / TICKS)
}

/// The command name of process `pid`.
pub fn comm(pid: u32) -> Option<String> {
    let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(c.trim().to_owned())
}

/// Local TCP ports of process `pid`'s sockets connected to remote port `remote`
/// (from `/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`; needs the right to read the
/// process's fds: the same user, or root).
pub fn connected_ports(pid: u32, remote: u16) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .filter_map(|e| {
            let l = std::fs::read_link(e.ok()?.path()).ok()?;
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        ports.extend(tcp_ports(&t, remote, &inodes));
    }
    ports
}

/// From a `/proc/net/tcp` table: the local ports of the sockets in `inodes` whose
/// remote port is `remote`.
pub fn tcp_ports(table: &str, remote: u16, inodes: &[String]) -> Vec<u16> {
    let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = l.split_whitespace().collect();
            let inode = f.get(9)?;
            if port(f.get(2)?)? != remote || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            port(f.get(1)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn parses_a_stat_line_whose_name_has_spaces_and_parentheses() {
        let line = "4242 (postgres: x (y) ) S 2231 4242 4242 0 -1 4194560 321 0 0 0 \
                    150 25 7 3 20 0 1 0 3000 230375424 4000 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                pid: 4242,
                ppid: 2231,
                own: 175,
                reaped: 10
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
    }

    #[test]
    fn a_tree_counts_its_descendants_and_what_it_reaped() {
        let p = |pid, ppid, own, reaped| Stat {
            pid,
            ppid,
            own,
            reaped,
        };
        let procs = [
            p(1, 0, 1000, 0),
            p(10, 1, 5, 300), // the postmaster, 300 ticks of ended backends
            p(11, 10, 40, 0),
            p(12, 10, 60, 0),
            p(13, 12, 2, 0),  // a grandchild
            p(20, 1, 999, 0), // another server: not ours
        ];
        assert_eq!(tree_ticks(&procs, 10), Some(5 + 300 + 40 + 60 + 2));
        assert_eq!(tree_ticks(&procs, 99), None);
        // Backend 12 (with 13) ends and is reaped: its time moves to the parent.
        let after = [p(1, 0, 1000, 0), p(10, 1, 5, 362), p(11, 10, 40, 0)];
        assert_eq!(tree_ticks(&after, 10), tree_ticks(&procs, 10));
    }

    #[test]
    fn reads_the_local_ports_connected_to_a_remote_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 111 1 0 100 0 0 10 0\n\
            1: 0100007F:D431 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n\
            2: 0100007F:D432 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1\n";
        let ours = ["222".to_owned(), "111".to_owned()];
        assert_eq!(tcp_ports(table, 5432, &ours), [0xD431]);
    }

    /// A child that burns CPU and ends inside the window still counts: the tree's
    /// figure only grows. (Summing the live processes by name, as the bench did, loses
    /// the ended child's time, and the difference goes negative.)
    #[test]
    fn an_ended_child_keeps_its_time_in_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let stop = dir.path().join("stop");
        // A child that burns CPU until `stop` exists; the parent waits for it, says so,
        // and stays until its stdin closes.
        let script = format!(
            "(while [ ! -e '{}' ]; do :; done) & child=$!; echo $child; wait $child; echo done; read _",
            stop.display()
        );
        let mut parent = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let root = parent.id();
        let mut out = std::io::BufReader::new(parent.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let child: u32 = line.trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let before = loop {
            let procs = all_stats();
            let c = procs.iter().find(|s| s.pid == child).map_or(0, |s| s.own);
            if c >= 20 {
                break tree_ticks(&procs, root).unwrap();
            }
            assert!(Instant::now() < deadline, "the child never used CPU");
            std::thread::yield_now();
        };
        std::fs::write(&stop, "").unwrap();
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "done");
        assert!(!std::path::Path::new(&format!("/proc/{child}")).exists());
        let after = tree_ticks(&all_stats(), root).unwrap();
        drop(parent.stdin.take());
        parent.wait().unwrap();
        assert!(
            after >= before,
            "the tree's CPU went down from {before} to {after} ticks when its child ended"
        );
    }
}
