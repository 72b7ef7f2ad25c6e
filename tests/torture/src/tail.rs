//! The tail family: change files in JSON lines or CSV, written record by record, rotated
//! by the real /usr/sbin/logrotate (create or copytruncate, dateext, compress with or
//! without delaycompress, up to three rotations within a step), truncated (with the
//! agent up, or down once the stream has every record), and joined by files that
//! appear late; with or without `debounce`; sometimes a second tail source on the same
//! directory, following files of its own (`extra*.log`).
//!
//! Truth: the final state the records imply (per key, the last record; a `d` removes
//! the key). Every record carries `n`, rising over the whole scenario, so each record
//! must arrive exactly once and a key's records in order.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::check::{self, canon_text, Order, Row, State};
use crate::procs::Res;
use crate::rng::Rng;
use crate::scenario::Source;
use crate::stream::{Msg, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rotation {
    None,
    Create,
    CopyTruncate,
}

struct File {
    path: PathBuf,
    /// Its keys are `base + k`: files never share a key (their order is not defined).
    base: u64,
    live: Vec<u64>,
    next_key: u64,
}

pub struct Tail {
    csv: bool,
    rotation: Rotation,
    dateext: bool,
    compress: bool,
    delaycompress: bool,
    glob_rotated: bool,
    truncate: bool,
    /// Steps at which a late file appears.
    late_at: Vec<usize>,
    /// Keys drawn from this many per file (hot keys), or ever new ones.
    hot: Option<u64>,
    garbage: bool,
    per_step: (u64, u64),
    /// `debounce` on the source(s): a key's changes within the window become one event.
    debounce: bool,
    /// A second source, `extra`, follows `extra*.log` in the same directory.
    extra: bool,
    /// Processes appending to each file at once (1: one writer). Each key's records
    /// are written by one of them, whole records with one `write` each (O_APPEND), as
    /// concurrent loggers do.
    writers: u64,
    dir: PathBuf,
    logs: PathBuf,
    files: Vec<File>,
    rng: Rng,
    n: i64,
    truth: State,
    written: HashSet<i64>,
    bad: u64,
    rotations: u64,
    truncations: u64,
}

/// The first seed whose plan may have concurrent writers to one file.
pub const WRITERS: u64 = 20_000;

/// The first seed whose plan may use the knobs added after the first slice (`debounce`,
/// a second source on the directory).
pub const LATER_KNOBS: u64 = 10_000;

const NAMES: [&str; 8] = [
    "Zürich — 東京 ✓",
    "O'Brien",
    "plain",
    "emoji 🚑",
    "back\\slash",
    "comma, \"quoted\"",
    "two\nlines",
    "tab\there",
];
const AMOUNTS: [&str; 6] = [
    "12345678901234567890.1234567890",
    "0.0000000001",
    "-99999999999999999999.9999999999",
    "12.50",
    "7",
    "3.14159265358979323846264338327",
];

impl Tail {
    pub fn draw(r: &mut Rng, seed: u64, dir: &Path, steps: usize) -> Tail {
        // Knobs added after the first slice come from a stream of their own, and only
        // from seed LATER_KNOBS on: the seeds below (CI's first list, the regression
        // tests') replay the plans they always had.
        let mut later = Rng::new(r.clone().next_u64() ^ 0x9e37_79b9_7f4a_7c15);
        let later_knobs = seed >= LATER_KNOBS;
        let debounce = later_knobs && later.chance(25);
        let extra = later_knobs && later.chance(25);
        // From seed WRITERS on, from a stream of its own too.
        let mut w = Rng::new(seed ^ 0x2545_f491_4f6c_dd1d);
        let writers = if seed >= WRITERS && w.chance(35) {
            w.range(2, 3)
        } else {
            1
        };
        let csv = r.chance(40);
        let rotation = *r.pick(&[Rotation::None, Rotation::Create, Rotation::CopyTruncate]);
        let late = r.range(0, 2) as usize;
        let late_at = (0..late).map(|_| r.below(steps as u64) as usize).collect();
        Tail {
            csv,
            rotation,
            dateext: r.chance(30),
            compress: r.chance(40),
            delaycompress: r.chance(60),
            glob_rotated: r.chance(50),
            truncate: r.chance(35),
            late_at,
            hot: r.chance(40).then(|| r.range(1, 8)),
            garbage: !csv && r.chance(40),
            per_step: if r.chance(20) { (200, 800) } else { (5, 80) },
            debounce,
            extra,
            writers,
            dir: dir.to_owned(),
            logs: dir.join("logs"),
            files: Vec::new(),
            rng: r.fork(),
            n: 0,
            truth: State::new(),
            written: HashSet::new(),
            bad: 0,
            rotations: 0,
            truncations: 0,
        }
    }

    fn live(&self) -> PathBuf {
        self.logs.join("changes.log")
    }

    fn logrotate_conf(&self) -> String {
        let mut o = vec!["rotate 100000", "missingok", "ifempty", "nomail"];
        o.push(if self.rotation == Rotation::CopyTruncate {
            "copytruncate"
        } else {
            "create"
        });
        if self.dateext {
            o.extend(["dateext", "dateformat -%Y%m%d-%H%M%S"]);
        }
        if self.compress {
            o.push("compress");
            if self.delaycompress {
                o.push("delaycompress");
            }
        }
        format!(
            "{} {{\n    {}\n}}\n",
            self.live().display(),
            o.join("\n    ")
        )
    }

    fn rotate(&mut self) -> Res<()> {
        let o = Command::new("/usr/sbin/logrotate")
            .arg("-f")
            .arg("-s")
            .arg(self.dir.join("logrotate.state"))
            .arg(self.dir.join("logrotate.conf"))
            .output()
            .map_err(|e| {
                format!("run /usr/sbin/logrotate (scripts/ensure-deps installs it): {e}")
            })?;
        // dateext to the second refuses a second rotation within one second.
        if !o.status.success() && !self.dateext {
            return Err(format!("logrotate: {}", String::from_utf8_lossy(&o.stderr)));
        }
        self.rotations += u64::from(o.status.success());
        Ok(())
    }

    /// Truncates the live file once the stream holds every record written so far (what
    /// was not read before a truncation is gone by the writer's own doing).
    fn truncate_live(&mut self, reader: &mut Reader, tend: &mut dyn FnMut()) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.caught_up(&reader.msgs) {
            if Instant::now() > deadline {
                return Err(format!(
                    "before a truncation: the stream did not get every record written within 60 s ({} written, {} messages)",
                    self.written.len(),
                    reader.msgs.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
            // An aimed kill may strike while this waits: the agent is started again.
            tend();
            reader.poll()?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.live())
            .map_err(|e| format!("truncate: {e}"))?;
        f.set_len(0).map_err(|e| format!("truncate: {e}"))?;
        self.truncations += 1;
        Ok(())
    }

    /// The stream holds every record written, or with `debounce` (which merges a key's
    /// changes) replays to the state they imply.
    fn caught_up(&self, msgs: &[Msg]) -> bool {
        if self.debounce {
            check::compare(&check::replay(msgs), &self.truth).is_empty()
        } else {
            self.all_arrived(msgs)
        }
    }

    fn all_arrived(&self, msgs: &[Msg]) -> bool {
        let mut seen = HashSet::new();
        for m in msgs {
            let img = if m.json["op"] == "d" {
                &m.json["before"]
            } else {
                &m.json["after"]
            };
            if let Some(n) = check::as_int(&img["n"]) {
                seen.insert(n);
            }
        }
        self.written.iter().all(|n| seen.contains(n))
    }

    fn new_file(&mut self, name: &str) -> Res<()> {
        let path = self.logs.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let base = self.files.len() as u64 * 1_000_000;
        self.files.push(File {
            path,
            base,
            live: Vec::new(),
            next_key: 0,
        });
        Ok(())
    }

    /// A key for file `fi` not live in it: a hot one still free, or a new one.
    fn new_key(&mut self, fi: usize) -> Option<u64> {
        let f = &mut self.files[fi];
        match self.hot {
            Some(h) => {
                let free: Vec<u64> = (0..h).filter(|k| !f.live.contains(k)).collect();
                (!free.is_empty()).then(|| *self.rng.pick(&free))
            }
            None => {
                f.next_key += 1;
                Some(f.next_key)
            }
        }
    }

    /// One change for file `fi` (an insert, update, delete or key change): its
    /// record(s), each with its key (a malformed one with a random number).
    fn record(&mut self, fi: usize) -> Vec<(u64, String)> {
        if self.garbage && self.rng.chance(3) {
            self.bad += 1;
            let k = self.rng.below(100);
            return vec![(k, format!("{{\"id\":{k},\"op\":\"c\",\"n\":\n"))];
        }
        let roll = self.rng.below(100);
        // (key, delete?) in the order they are written.
        let mut acts: Vec<(u64, bool)> = Vec::new();
        if self.files[fi].live.is_empty() || roll < 40 {
            match self.new_key(fi) {
                Some(k) => {
                    self.files[fi].live.push(k);
                    acts.push((k, false));
                }
                None => acts.push((*self.rng.pick(&self.files[fi].live), false)),
            }
        } else if roll < 75 {
            acts.push((*self.rng.pick(&self.files[fi].live), false));
        } else {
            let i = self.rng.below(self.files[fi].live.len() as u64) as usize;
            let old = self.files[fi].live.swap_remove(i);
            acts.push((old, true));
            // A key change: the old key deleted, a new one inserted.
            if roll >= 88 {
                if let Some(k) = self.new_key(fi) {
                    self.files[fi].live.push(k);
                    acts.push((k, false));
                }
            }
        }
        let base = self.files[fi].base;
        acts.into_iter()
            .map(|(k, del)| (base + k, self.emit(base + k, del)))
            .collect()
    }

    /// The line of a change of key `id`; updates the truth.
    fn emit(&mut self, id: u64, del: bool) -> String {
        self.n += 1;
        let n = self.n;
        self.written.insert(n);
        let skey = format!("t/{id}");
        if del {
            self.truth.remove(&skey);
            return if self.csv {
                format!("{id},d,{n},,,\n")
            } else {
                format!("{{\"id\":{id},\"op\":\"d\",\"n\":{n}}}\n")
            };
        }
        let op = if self.truth.contains_key(&skey) {
            "u"
        } else {
            "c"
        };
        let name = *self.rng.pick(&NAMES);
        let amount = *self.rng.pick(&AMOUNTS);
        let note = (!self.rng.chance(30)).then(|| format!("note {n} ✓"));
        let mut row = Row::new();
        row.insert("id".into(), id.to_string());
        row.insert("n".into(), n.to_string());
        row.insert("name".into(), name.to_owned());
        row.insert("amount".into(), canon_text(amount));
        row.insert("note".into(), note.clone().unwrap_or_else(|| "∅".into()));
        self.truth.insert(skey, row);
        if self.csv {
            format!(
                "{id},{op},{n},{},{amount},{}\n",
                csv_field(name),
                note.as_deref().map(csv_field).unwrap_or_default()
            )
        } else {
            format!(
                "{{\"id\":{id},\"op\":\"{op}\",\"n\":{n},\"name\":{},\"amount\":{amount},\"note\":{}}}\n",
                serde_json::Value::from(name),
                note.map_or(serde_json::Value::Null, serde_json::Value::from)
            )
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn append(path: &Path, header: Option<&str>, text: &str, split: usize) -> Res<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let empty = f.metadata().map(|m| m.len() == 0).unwrap_or(true);
    if let (Some(h), true) = (header, empty) {
        f.write_all(h.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // Two writes, cut at a random byte: the agent may see a partial line.
    let mut cut = split.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    for part in [&text[..cut], &text[cut..]] {
        f.write_all(part.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// `writers` threads append `recs` to `path` at once, each with its own O_APPEND
/// descriptor: the records of a key all by one thread (key modulo `writers`), in
/// order, each record with one `write`. The header, if the file is empty, first.
fn append_concurrently(
    path: &Path,
    header: Option<&str>,
    recs: &[(u64, String)],
    writers: u64,
) -> Res<()> {
    append(path, header, "", 0)?;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                s.spawn(move || -> Res<()> {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    for (_, r) in recs.iter().filter(|(k, _)| k % writers == w) {
                        f.write_all(r.as_bytes())
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| "a writer thread panicked".to_owned())?
        })
    })
}

impl Source for Tail {
    fn describe(&self) -> String {
        format!(
            "tail {} rotation={:?}{}{} glob={} truncate={} late_files={} hot={:?} garbage={} per_step={:?}{}{}{}",
            if self.csv { "csv" } else { "jsonl" },
            self.rotation,
            if self.dateext { " dateext" } else { "" },
            match (self.compress, self.delaycompress) {
                (false, _) => "",
                (true, true) => " compress+delaycompress",
                (true, false) => " compress",
            },
            if self.glob_rotated { "*.log*" } else { "*.log" },
            self.truncate,
            self.late_at.len(),
            self.hot,
            self.garbage,
            self.per_step,
            if self.debounce { " debounce" } else { "" },
            if self.writers > 1 {
                format!(" writers={}", self.writers)
            } else {
                String::new()
            },
            if self.extra {
                " +source extra*.log"
            } else {
                ""
            }
        )
    }

    fn config(&self) -> String {
        let glob = if self.glob_rotated { "*.log*" } else { "*.log" };
        let logs = self.logs.display();
        let paths = if self.extra {
            // Two sources on one directory: globs that never match each other's files.
            format!("\"{logs}/changes{glob}\", \"{logs}/late-*.log\"")
        } else {
            format!("\"{logs}/{glob}\"")
        };
        let source = |name: &str, paths: &str| {
            format!(
                "[[source]]\nname = \"{name}\"\nkind = \"tail\"\npaths = [{paths}]\nformat = \"{}\"\ntable = \"t\"\nkey = [\"id\"]\nop_field = \"op\"\nstat_interval = \"200ms\"\nrotate_wait = \"1s\"\n{}",
                if self.csv { "csv" } else { "jsonl" },
                if self.debounce {
                    "debounce = { window = \"300ms\", max_delay = \"2s\" }\n"
                } else {
                    ""
                }
            )
        };
        let mut out = source("files", &paths);
        if self.extra {
            out.push_str(&source("extra", &format!("\"{logs}/extra*.log\"")));
        }
        out
    }

    fn setup(&mut self, _config: &Path) -> Res<()> {
        std::fs::create_dir_all(&self.logs).map_err(|e| format!("logs: {e}"))?;
        std::fs::write(self.dir.join("logrotate.conf"), self.logrotate_conf())
            .map_err(|e| format!("logrotate.conf: {e}"))?;
        self.new_file("changes.log")?;
        if self.extra {
            self.new_file("extra.log")?;
        }
        Ok(())
    }

    fn ready(&self, state_dir: &Path) -> bool {
        // Written right after its first scan of the globs.
        let cp = |name: &str| state_dir.join(format!("checkpoints/{name}.json")).exists();
        cp("files") && (!self.extra || cp("extra"))
    }

    fn step(
        &mut self,
        i: usize,
        quiet: bool,
        reader: &mut Reader,
        tend: &mut dyn FnMut(),
    ) -> Res<()> {
        let late: Vec<usize> = self
            .late_at
            .iter()
            .enumerate()
            .filter(|(_, at)| **at == i)
            .map(|(j, _)| j)
            .collect();
        for j in late {
            self.new_file(&format!("late-{j}.log"))?;
        }
        if self.truncate && self.rng.chance(25) {
            if quiet {
                self.truncate_live(reader, tend)?;
            } else if reader.poll().is_ok() && self.caught_up(&reader.msgs) {
                // The agent (or its link) is down, but every record is in the stream.
                self.truncate_live(reader, tend)?;
            }
        }
        // 0 to 3 rotations, with some of the step's records written before each.
        let rotations = if self.rotation != Rotation::None && self.rng.chance(35) {
            self.rng.range(1, 3)
        } else {
            0
        };
        let count = self.rng.range(self.per_step.0, self.per_step.1);
        let header = self.csv.then_some("id,op,n,name,amount,note\n");
        for chunk in 0..=rotations {
            if chunk > 0 {
                self.rotate()?;
            }
            let mut per_file: BTreeMap<usize, Vec<(u64, String)>> = BTreeMap::new();
            for _ in 0..count / (rotations + 1) {
                // Most records go to the rotated file.
                let fi = if self.files.len() > 1 && self.rng.chance(35) {
                    1 + self.rng.below(self.files.len() as u64 - 1) as usize
                } else {
                    0
                };
                let recs = self.record(fi);
                per_file.entry(fi).or_default().extend(recs);
            }
            for (fi, recs) in per_file {
                let len: usize = recs.iter().map(|(_, r)| r.len()).sum();
                let split = self.rng.below(len as u64 + 1) as usize;
                let path = &self.files[fi].path;
                if self.writers > 1 {
                    append_concurrently(path, header, &recs, self.writers)?;
                } else {
                    let text: String = recs.into_iter().map(|(_, r)| r).collect();
                    append(path, header, &text, split)?;
                }
            }
        }
        Ok(())
    }

    fn truth(&self) -> Res<State> {
        Ok(self.truth.clone())
    }

    fn complete(&self, msgs: &[Msg]) -> bool {
        self.caught_up(msgs)
    }

    fn checks(&self, msgs: &[Msg], restarted: bool) -> Vec<String> {
        if !self.debounce {
            let mut out = check::exactly_once(msgs, "n", &self.written);
            out.extend(check::key_order(msgs, "n", Order::Strict));
            return out;
        }
        // Debounced: a key's changes within the window are one event, so not every
        // record arrives; none may arrive twice. A change that left merged before a
        // restart is sent again unmerged, under another id (docs/design.md, "Debounce"):
        // then only the final state is checked, as for the database sources.
        if restarted {
            return Vec::new();
        }
        let mut out = check::at_most_once(msgs, "n", &self.written);
        out.extend(check::key_order(msgs, "n", Order::Strict));
        out
    }

    fn bad_records(&self) -> u64 {
        self.bad
    }

    fn changes(&self) -> u64 {
        self.written.len() as u64
    }

    fn cleanup(&mut self) {}

    fn losses_countable(&self) -> bool {
        // A truncation waits for every record to arrive; debounce merges records.
        !self.truncate && !self.debounce
    }
}
