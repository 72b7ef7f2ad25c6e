//! The tail source: follows change files and turns each record into an event.
//!
//! It runs on its own thread: file I/O is blocking and local, and keeping it off the
//! async runtime leaves the runtime to the publisher. One loop:
//!
//! 1. **Find** files. The watcher (`notify`, on its own thread) opens at once every file
//!    created in the globs and every file renamed into or out of them, and hands the
//!    open descriptors over (`Seen`); the globs are scanned at start, after such
//!    events, and every `stat_interval` (NFS, lost events). A file is held from the
//!    moment it is first seen, even empty: logrotate's `create` makes an empty file that
//!    may be written and rotated away before the next look, and a file renamed away or
//!    deleted can still be read to its end. Compressed names are skipped. A file still
//!    matched, read to its end and unchanged for `close_idle` is closed, and opened
//!    again by path (same device, inode and birth time) when it changes; open files
//!    are counted in one budget shared by the tail sources (see `fds`; files that
//!    cannot be opened for want of a descriptor wait for the next look).
//! 2. **Read** every file that grew, those that left the globs first, then oldest
//!    modification time first; a file not read to its end holds back the files after it,
//!    so a rotated file is finished before the file that replaced it. Each file's
//!    *head* (its first bytes, up to 4 KiB; `files::Head`) is checked whenever it changed and
//!    between the 256 KiB reads of a backlog: a file that shrank or whose first bytes
//!    changed was truncated (copytruncate), even if it has grown back past the read
//!    position. What was not read yet is then read from the copy (same ids), and the
//!    file gets a new generation and is read again from 0. The copy is a new file held
//!    unread as a *possible copy* when the globs match it (see [`Tail::judge_new_files`];
//!    a copy shorter than the file's head, made before the file grew, is matched against
//!    the head's bytes, which the agent keeps),
//!    else one found next to the file by its head, else a `.gz` rotation whose content
//!    starts with the head (compressed before it was read; see `files::find_gz`). A
//!    file followed at byte 0 with no head yet that changes before a byte of it was read
//!    is looked at for copies made since it was last seen (see
//!    [`Tail::copied_before_read`]): a copytruncate between two looks. Copies made
//!    after the one that held the truncated generation's rest (copytruncates between two
//!    looks of a file with a head: the source waited on a full spool) hold generations
//!    never seen: read whole under the file's ids before it (see
//!    [`Tail::copies_after_truncation`]).
//! 3. **Frame and map** new bytes into records; a partial last record waits for more
//!    bytes. Each record becomes one event whose position is
//!    `<dev>.<inode>.<fingerprint>.<generation>@<offset>` (the fingerprint is the hash of
//!    the first line, as in every version), so its message id is the same every time
//!    that record is sent. Bad and over-long records go to the quarantine; one the
//!    quarantine cannot take (a full disk) is kept, reading that file stops at it and the
//!    write is retried with backoff: the position never passes a record that is nowhere.
//! 4. **Hand batches** to the sink over a bounded channel (waiting when it is full), and
//!    **checkpoint** offsets up to the sink's ack watermark.
//!
//! Crash cases: everything after the checkpoint is read and sent again with the same
//! ids; JetStream drops those it already holds (within its duplicate window). A file
//! rotated while the agent was stopped is found by its inode (via the globs, or in its
//! old directory) and finished before newer files; files created *and* rotated away
//! while it was stopped are found by name next to it (see `files::rotated_since`) and
//! read whole, oldest first; the oldest copy of a live file checkpointed at offset 0
//! with no head is that generation, read under its ids (see
//! [`Tail::track_rotated_while_stopped`]); the copies of the generations after the
//! checkpointed one that were already being read at the stop (the checkpoint keeps
//! their heads: `between`, `next`) are found by those heads, whenever they were made
//! (a copy the globs match that was followed from its end, everything in it read from
//! the live file, counts too), and read under the file's ids in generation order (see
//! [`Tail::track_later_generations`]). A file truncated while the agent was stopped resumes its old
//! generation, which the first read round finishes from the copy (when there is one,
//! compressed or not) before reading the file again from 0. A file gone while the agent
//! was stopped whose rest is in a `.gz` next to it (rotated and compressed: `compress`
//! across two rotations or more) is read from there, from its checkpointed offset under
//! its own ids, before the files in the globs (at a start, the oldest `.gz` modified since the
//! stop first: later generations may start with the same bytes, a CSV header); then
//! `.gz` rotations modified since the stop, not already taken (one `.gz` recovers at
//! most one file), whose content starts with no known head (written after the stop: the
//! copies of a file still empty at the stop, a copy the next rotation compressed, a later
//! generation of a vanished file whose rest was recovered) are read whole, under their
//! own inode, or that number with bit 62 flipped when a file still known has it. Only
//! names that are a rotation of the file's own name count (`files::gz_family`: never a
//! mere prefix, `apport.log.1.gz` for `app.log`). Each `.gz` taken is decompressed whole
//! into an unnamed file before it is read, stopping while 64 MiB (an eighth of a small
//! file system) are still free there (`files::gunzip_reserve`). A `.gz` that cannot be
//! decompressed (a full state directory) is never given up: it is tried again with
//! backoff, and what is newer waits for it (at a start, every file: see
//! [`Tail::retry_gz`]; at run time, the file whose rest or copy it is, and the files
//! after it: see `Tracked::rest_wait`), so nothing is lost or read out of order because
//! a disk was full for a while (see docs/design.md, known edges). A
//! possible copy (unread, checkpointed at 0) is judged again. A file deleted while the agent was stopped with no such `.gz` is gone
//! with whatever it held past the checkpoint: that is logged. Lines written between
//! logrotate's copy and its truncate are in neither file (logrotate's own window). A file deleted and
//! recreated with the same inode while the agent was stopped, with the same first line
//! and the same first bytes as far as the checkpoint's head covers them (up to 4 KiB),
//! and at least as long as the checkpointed offset, cannot be told from the old one and
//! is resumed at the old offset. A checkpoint written before heads existed is matched by
//! the first line alone, once.
//!
//! Where the code lives:
//! - `mod.rs`: the types (`Tracked`, `Tail`, `Out`, …), `spawn`, the loop (`run`, `wait`, `finish`).
//! - `track.rs`: finding and holding files: the scan, opening, closing idle, reopening.
//! - `recovery.rs`: start-up recovery (rotated, copied, compressed while stopped) and `.gz` rests.
//! - `copies.rs`: copytruncate: copies before a read or after a truncation, new generations.
//! - `read.rs`: the read round, framing records into events, the quarantine of bad records.
//! - `out.rs`: batches to the sink, acks, checkpoints, status and the waiting/unlisted logs.
//! - `watcher.rs`: the `notify` watcher, which opens new and renamed files at once (`Seen`).
//! - `files.rs`: recognising files (keys, fingerprints, heads), globs, rotations and `.gz`.
//! - `fds.rs`: the budget of open files shared by the tail sources.
//! - `state.rs`: the checkpoint: per file, how far its events are acknowledged.
//! - `resend.rs`: quarantined records built into events again (`lockstep quarantine resend`).

mod copies;
mod fds;
mod files;
mod out;
mod read;
mod recovery;
mod resend;
mod state;
mod track;
mod watcher;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use lockstep_formats::record::Decoder;
use lockstep_formats::Value;

use self::files::{FileKey, Globs, Head};
use self::state::{Checkpoint, FileCp};
use self::watcher::{watch, Seen};
use super::{SourceContext, SourceThread, Stopping, BATCH_SIZE};
use crate::admin::metrics::TableCounters;
use crate::config::TailConfig;
use crate::pipeline::debounce::{Debouncer, Released};
use crate::pipeline::quarantine::Quarantine;
use crate::pipeline::Outgoing;

pub use self::fds::raise_limit;
pub use self::files::{scan, watch_root};

/// Most bytes read from one file before the loop looks around again (checkpoints,
/// shutdown, other files).
const READ_SLICE: u64 = 8 << 20;
const CHUNK: usize = 256 * 1024;
/// Positions kept one by one while the debouncer holds changes before them.
const HELD_MARKS: usize = 4096;
/// Least time between two checkpoint writes while events flow.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// The longest the loop waits without a wake-up (a file event, acks, the stop): for its
/// periodic work (debounce deadlines, retries, closing idle files).
const TICK: Duration = Duration::from_millis(250);
/// How long a new file that starts as a followed file does is held as that file's
/// possible copy: logrotate's `copytruncate` truncates the file right after copying it.
const COPY_WAIT: Duration = Duration::from_secs(5);

/// Starts a tail source on its own thread.
pub fn spawn(cfg: TailConfig, cx: SourceContext) -> std::io::Result<SourceThread> {
    std::thread::Builder::new()
        .name(format!("tail:{}", cx.name))
        .spawn(move || Tail::new(cfg, cx).map(Tail::run))
}

/// A file being followed.
struct Tracked {
    key: FileKey,
    path: PathBuf,
    /// `None` while closed: read to its end, still matched by the globs and unchanged for
    /// `close_idle` (or closed early to make room; see `fds`). Looked at by path, and
    /// reopened when it changes (see [`Tail::reopen`]).
    file: Option<fds::Held>,
    /// When the file was created (statx birth time, where the file system keeps one): a
    /// closed file whose inode number a new file took is told from it on reopening.
    born: Option<SystemTime>,
    /// When its size or time last changed (or it was opened): how long it has been idle.
    changed_at: Instant,
    fp: Option<u64>,
    /// The file's first bytes, checked again whenever it changed (see [`Head`]).
    head: Head,
    /// The bytes `head` covers (up to 4 KiB), kept while the file is followed: a copy
    /// `copytruncate` made before the file grew is recognised as their beginning, even
    /// once the file is truncated (see [`note_first`]).
    first: Vec<u8>,
    /// Check the head at the next look even if size and time look unchanged (a change was
    /// seen in the middle of a read).
    suspect: bool,
    /// Another file took this one's inode number (its birth time differs): the next look
    /// handles it as a truncation, so the old file's rest is looked for in its copies
    /// and `.gz` rotations before the new one is read from 0.
    replaced: bool,
    /// A bad record that could not be written to the quarantine: reading this file stops
    /// at it, and it is tried again (see [`Out::retry_blocked`]).
    blocked: Option<Blocked>,
    gen: u32,
    /// Offset of the first byte of `buf`: everything before it is framed.
    offset: u64,
    /// Bytes read but not yet framed (a partial record).
    buf: Vec<u8>,
    decoder: Decoder,
    /// Inside an over-long record that started at this offset: discard to its newline.
    skipping: Option<u64>,
    size: u64,
    mtime: SystemTime,
    matched: bool,
    gone_since: Option<Instant>,
    nlink: u64,
    /// Order of discovery: files found earlier (or resumed from the checkpoint) are older.
    discovered: u64,
    /// Nothing read from it yet, from offset 0: once it has bytes, it is checked against
    /// the other files' heads before the first read (see [`Tail::judge_new_files`]).
    fresh: bool,
    /// A possible copy (`copytruncate`) of a followed file, not read while it waits for
    /// that file to be found truncated; read as a new file after this time.
    copy_wait: Option<Instant>,
    /// The rest of a vanished file, decompressed from its `.gz` rotation into an unnamed
    /// file: read under the vanished file's ids, before the files in the globs. Its `key` is
    /// the vanished file's, which a new file may reuse: never matched to found files.
    recovered: bool,
    /// Nothing of this generation read yet and no head: the file's status-change time
    /// (ctime) at the last look. When it changes before a first byte is read, what was
    /// written meanwhile may already be in a copy (`copytruncate`) made since: see
    /// [`Tail::copied_before_read`].
    bare_since: Option<SystemTime>,
    /// Generations to skip at the next truncation: read from copies (see
    /// [`Tail::copy_of_bare_generation`], [`Tail::track_later_generations`],
    /// [`Tail::copies_after_truncation`]).
    gen_skip: u32,
    /// Content older than this file's new bytes (the rest of its generation, or copies
    /// made before its first byte was read) is in a `.gz` that could not be decompressed
    /// (a full state directory) or a file no descriptor was free for: this file, and
    /// every file after it, waits; the look is tried again at this time.
    rest_wait: Option<Retry>,
}

impl Tracked {
    /// Content recovered at a start (a rest decompressed from its `.gz`, a copy, the rest
    /// of a truncated generation) in `file` of `(size, mtime)`, read to its end and never
    /// matched to the files in the globs; from offset 0 of generation 0 with no identity
    /// until the caller says otherwise.
    fn recovered(
        key: FileKey,
        path: PathBuf,
        file: File,
        (size, mtime): (u64, SystemTime),
        discovered: u64,
        decoder: Decoder,
    ) -> Self {
        Tracked {
            key,
            path,
            file: Some(fds::Budget::global().adopt(file)),
            born: None,
            changed_at: Instant::now(),
            fp: None,
            head: Head::default(),
            suspect: false,
            replaced: false,
            blocked: None,
            gen: 0,
            offset: 0,
            buf: Vec::new(),
            decoder,
            skipping: None,
            size,
            mtime,
            matched: false,
            gone_since: Some(Instant::now()),
            nlink: 0,
            discovered,
            fresh: false,
            copy_wait: None,
            recovered: true,
            first: Vec::new(),
            bare_since: None,
            gen_skip: 0,
            rest_wait: None,
        }
    }

    fn read_pos(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }
}

/// A bad record waiting for the quarantine to be writable again (a full disk, a broken
/// quarantine directory). The position does not move past it until it is written.
struct Blocked {
    offset: u64,
    /// Its bytes (the first `max_record_bytes` of an over-long one).
    data: Vec<u8>,
    full_len: u64,
    reason: String,
    /// Where the next record starts, in generation `gen`.
    end: u64,
    gen: u32,
    retry_at: Instant,
    backoff: Duration,
}

/// Where the rest of a truncated file's generation is (see [`Out::find_rest`]).
struct Rest {
    path: PathBuf,
    /// The copy, or the `.gz` rotation decompressed into an unnamed file.
    file: File,
    size: u64,
    /// The copy's modification time: when the generation was last written.
    mtime: SystemTime,
    /// The uncompressed copy, when it is one (it is then followed from its end).
    used: Option<(PathBuf, File, u64)>,
}

/// First and longest pause between two tries of a quarantine write.
const QUARANTINE_RETRY: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(10));

/// First and longest pause between two tries of a `.gz` decompression (or an open) that
/// content older than what is read next waits for.
const GZ_RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(10));

/// When something that failed for want of room (or of a file descriptor) is tried again.
#[derive(Clone, Copy)]
struct Retry {
    at: Instant,
    backoff: Duration,
}

impl Retry {
    fn first() -> Self {
        Retry {
            at: Instant::now() + GZ_RETRY.0,
            backoff: GZ_RETRY.0,
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The next try, after a longer pause.
    fn again(self) -> Self {
        let backoff = (self.backoff * 2).min(GZ_RETRY.1);
        Retry {
            at: Instant::now() + backoff,
            backoff,
        }
    }
}

/// A compressed rotation found at a start that could not be decompressed yet (a full
/// state directory): tried again, with backoff, before any other file is read (they are
/// newer).
enum GzWait {
    /// The rest of a vanished file (or of its next generation) from its checkpoint entry;
    /// `gone`: when no `.gz` holds it after all, the file is logged as gone and retired.
    Rest { c: FileCp, gone: bool },
    /// A `.gz` written while stopped, read whole unless its content starts with one of
    /// `heads` (see [`Tail::track_compressed_while_stopped`]).
    Whole {
        path: PathBuf,
        mtime: SystemTime,
        key: FileKey,
        heads: Vec<Head>,
    },
    /// A `.gz` copy holding generation `c.gen` of file `c`, never seen (copytruncated
    /// again while the source waited: see [`Tail::copies_after_truncation`]), read whole
    /// under that file's ids when its content starts with `c.head`.
    Later {
        c: FileCp,
        gz: PathBuf,
        gz_key: FileKey,
        mtime: SystemTime,
    },
}

/// What became of a `.gz` file to be read whole ([`Out::gunzip_whole`]).
enum Whole {
    /// Decompressed (at its current name: `g.gz`).
    Read(files::Gunzipped),
    /// Its content starts with a file already known: not read whole.
    Known,
    /// Deleted before it could be read.
    Gone,
}

/// A position that becomes safe to checkpoint once the debouncer has released every
/// change up to `ord` and the sink acknowledged `seq`, the last event sent by then.
struct PendingPos {
    ord: u64,
    seq: u64,
    key: FileKey,
    gen: u32,
    end: u64,
    captured_ms: i64,
}

struct TableInfo {
    name: Arc<str>,
    subject: String,
    counters: Arc<TableCounters>,
}

/// Everything but the file list: what records turn into, and where positions go.
struct Out {
    cfg: TailConfig,
    cx: SourceContext,
    agent: Arc<str>,
    name: Arc<str>,
    kind: Arc<str>,
    tables: HashMap<String, Arc<TableInfo>>,
    batch: Vec<Outgoing>,
    deb: Debouncer<Arc<TableInfo>>,
    released: Vec<Released<Arc<TableInfo>>>,
    /// Positions waiting for the debouncer to release their changes, in order.
    held: VecDeque<PendingPos>,
    /// Positions waiting for their events' acks, in order.
    pending: VecDeque<PendingPos>,
    seq: u64,
    quarantine: Quarantine,
    cp: Checkpoint,
    last_cp: Instant,
    /// Files dropped from reading: retire their entry once acknowledged to this offset.
    retiring: HashMap<FileKey, (u32, u64)>,
    last_error: Option<String>,
    /// The `.gz` files (path and inode) whose content is already being read: one
    /// compressed rotation recovers at most one file, and is never also read whole.
    gz_taken: Vec<(PathBuf, FileKey)>,
    /// `lockstep quarantine resend` requests (see `resend`).
    resend: resend::Resend,
}

struct Tail {
    files: Vec<Tracked>,
    out: Out,
    globs: Arc<Globs>,
    seen: Arc<Mutex<Seen>>,
    _watcher: Option<notify::RecommendedWatcher>,
    first_scan: bool,
    /// Files the first scan found that waited for a file descriptor (see `fds`): when
    /// one is tracked later, it is judged as the first scan would have judged it
    /// (`start_at`, a truncation while stopped).
    waited_at_start: std::collections::HashSet<FileKey>,
    /// No checkpoint existed when the source started (`cp.existed` is true once the
    /// first one is written).
    first_start: bool,
    rescan: bool,
    last_scan: Instant,
    /// Order of discovery, shared with the watcher, which numbers the files it opens.
    discovered: Arc<AtomicU64>,
    /// Files found truncated at start (copytruncate while stopped), with their old head;
    /// or with none, files that were still empty when the agent stopped.
    truncated_while_stopped: Vec<(PathBuf, Option<Head>)>,
    /// Truncations handled lately: the old generation's head, how far it was read (from
    /// the file and its copy), and when. A new file that starts with such a head is that
    /// generation's copy, seen late (its file event came after the truncation was found):
    /// it is followed from that offset, not read again.
    truncations: Vec<(Head, u64, Instant)>,
    /// Files matched by the last scan that no file descriptor could be had for, and
    /// closed files that changed but could not be opened again in the last round (see
    /// `fds`); the sum is logged when it changes.
    waiting_open: usize,
    waiting_reopen: usize,
    waiting_logged: usize,
    /// Whether the last scan could not list a directory of the globs (logged once, and
    /// again once it can).
    unlisted: bool,
    /// Compressed rotations found at the start that wait for room to be decompressed
    /// (see [`Tail::retry_gz`]): no file is read until they are.
    gz_waiting: Vec<GzWait>,
    gz_retry: Option<Retry>,
}

impl Tail {
    fn new(cfg: TailConfig, cx: SourceContext) -> Result<Self, String> {
        let cp = Checkpoint::load(&cx.state_dir, &cx.name)?;
        let quarantine = cx.quarantine();
        let globs = Arc::new(Globs::new(&cfg.paths));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let discovered = Arc::new(AtomicU64::new(0));
        let watcher = match watch(
            cx.name.clone(),
            &cfg.paths,
            globs.clone(),
            seen.clone(),
            discovered.clone(),
            cx.watermark.wake().notifier(),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "source {}: cannot watch for file events ({e}); checking every {:?}",
                    cx.name,
                    cfg.stat_interval
                );
                None
            }
        };
        let mut deb = cx.debouncer();
        // A first start: nothing of these files was ever sent, so merging is safe from
        // the first record (see `pipeline::debounce`, "After a restart").
        deb.set_merging(!cp.existed);
        // After a restart: what is read again may have left before, merged or not.
        deb.set_resending();
        let first_start = !cp.existed;
        Ok(Tail {
            files: Vec::new(),
            out: Out {
                agent: Arc::from(cx.agent_id.as_str()),
                name: Arc::from(cx.name.as_str()),
                kind: Arc::from("tail"),
                tables: HashMap::new(),
                batch: Vec::with_capacity(BATCH_SIZE),
                deb,
                released: Vec::new(),
                held: VecDeque::new(),
                pending: VecDeque::new(),
                seq: cx.first_seq(),
                quarantine,
                cp,
                last_cp: Instant::now(),
                retiring: HashMap::new(),
                last_error: None,
                gz_taken: Vec::new(),
                resend: resend::Resend::default(),
                cfg,
                cx,
            },
            globs,
            seen,
            _watcher: watcher,
            first_scan: true,
            first_start,
            waited_at_start: std::collections::HashSet::new(),
            rescan: true,
            last_scan: Instant::now(),
            discovered,
            truncated_while_stopped: Vec::new(),
            truncations: Vec::new(),
            waiting_open: 0,
            waiting_reopen: 0,
            waiting_logged: 0,
            unlisted: false,
            gz_waiting: Vec::new(),
            gz_retry: None,
        })
    }

    fn run(mut self) {
        loop {
            self.out.cx.beat.beat();
            if *self.out.cx.shutdown.borrow() {
                break;
            }
            self.ingest();
            if self.rescan || self.last_scan.elapsed() >= self.out.cfg.stat_interval {
                self.scan();
            }
            let read = match self.read_round() {
                Ok(n) => n,
                Err(Stopping) => break,
            };
            if read == 0 && self.out.deb.is_enabled() && !self.out.deb.is_merging() {
                // Caught up with what waited at the start: merge from here on (see
                // `pipeline::debounce`, "After a restart").
                self.out.deb.set_merging(true);
            }
            self.close_idle();
            self.log_waiting();
            self.out.tick();
            if self.out.flush().is_err() || self.out.resend_turn().is_err() {
                break;
            }
            self.out.apply_acks();
            self.out.checkpoint(false);
            self.publish_status();
            if read == 0 {
                self.wait();
            }
        }
        self.finish();
    }

    /// Waits for a file event, the acks of what was handed to the sink, the agent's stop,
    /// or the next periodic look (a stat, a debounce deadline, a retry).
    fn wait(&mut self) {
        let due = self
            .out
            .deb
            .next_due()
            .map_or(TICK, |t| t.saturating_duration_since(Instant::now()));
        let mut timeout = TICK
            .min(due)
            .min(self.out.cfg.stat_interval)
            .min(crate::service::beat_within());
        if self.out.resend.active() {
            // A quarantine resend goes on at its own pace, acks or not.
            timeout = timeout.min(Duration::from_millis(20));
        }
        let w = &self.out.cx.watermark;
        if self.out.seq > w.get() && w.wake_at(self.out.seq) {
            // Acknowledged meanwhile: take them now.
            return;
        }
        w.wake().wait(timeout);
    }

    /// Takes what the watcher saw: files it opened as they appeared in the globs or were
    /// renamed (into or out of them), and whether a scan is due.
    fn ingest(&mut self) {
        let seen = match self.seen.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        self.rescan |= seen.structural;
        for (path, file, order) in seen.opened {
            let matched = self.globs.matches(&path);
            self.track_file(&path, file, matched, order);
        }
    }

    /// Shutdown: wait for the sink's last acks, then write the final checkpoint.
    fn finish(mut self) {
        self.out.apply_acks();
        if !self.out.pending.is_empty() {
            self.out.cx.await_acks(self.out.seq);
        }
        self.out.apply_acks();
        self.out.resend_acks();
        for t in &mut self.files {
            self.out.refresh_identity(t);
        }
        self.out.checkpoint(true);
        self.publish_status();
        tracing::info!(
            "source {}: stopped; checkpoint written, {} event(s) not acknowledged and {} held key(s) will be read and sent again at the next start",
            self.out.cx.name,
            self.out.pending.iter().filter(|p| p.seq > self.out.cx.watermark.get()).count(),
            self.out.deb.held()
        );
    }
}

/// Whether file `t` may be closed: open, read to its end (a partial last record is kept
/// in memory), still matched by the globs, and nothing else waits on it (a record for
/// the quarantine, a judgement as a possible copy). A file that left the globs is never
/// closed: it is read to its end and dropped after `rotate_wait`.
fn closable(t: &Tracked) -> bool {
    t.file.is_some()
        && t.matched
        && t.gone_since.is_none()
        && !t.recovered
        && !t.suspect
        && t.copy_wait.is_none()
        && t.blocked.is_none()
        && t.rest_wait.is_none()
        && t.size == t.read_pos()
}

/// A file's status-change time (ctime): changed by every write and truncation.
fn ctime(m: &fs::Metadata) -> SystemTime {
    let (secs, nsec) = (m.ctime(), m.ctime_nsec());
    if secs < 0 {
        return SystemTime::UNIX_EPOCH;
    }
    SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nsec.clamp(0, 999_999_999) as u32)
}

/// Whether a file still holds what was read of it: not shorter than the read position,
/// and the same first bytes. One `fstat` and one read of at most 4 KiB.
fn still_same(t: &Tracked) -> bool {
    let Some(f) = t.file.as_deref() else {
        return true;
    };
    let Ok(m) = f.metadata() else {
        return true;
    };
    m.len() >= t.read_pos() && !matches!(t.head.recheck(f, m.len()), Ok(None))
}

/// Whether a new file whose first bytes are `first` starts as the followed file `o`
/// does: with `o`'s head when `first` covers it, else (a copy still being written) with
/// the bytes `o` holds now.
/// Keeps `t.first` as the bytes `t.head` covers (read again only when the head changed;
/// left as it was when the file no longer holds them: truncated meanwhile).
fn note_first(t: &mut Tracked) {
    let n = t.head.len as usize;
    if t.first.len() == n && (n == 0 || t.head.starts(&t.first)) {
        return;
    }
    if let Some(Ok(mut b)) = t.file.as_deref().map(files::first_bytes) {
        if b.len() >= n && t.head.starts(&b) {
            b.truncate(n);
            t.first = b;
        }
    }
}

fn starts_as(first: &[u8], o: &Tracked) -> bool {
    if o.head.len > 0 && first.len() >= o.head.len as usize {
        return o.head.starts(first);
    }
    // Shorter than the head: a copy made before the file grew, perhaps already truncated.
    if !first.is_empty() && o.first.len() == o.head.len as usize && o.first.starts_with(first) {
        return true;
    }
    match o.file.as_deref().map(files::first_bytes) {
        Some(Ok(have)) => {
            !first.is_empty() && have.len() >= first.len() && have[..first.len()] == *first
        }
        _ => false,
    }
}

/// A field's value as text, for table and op fields.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        other => other.as_text().map(str::to_owned),
    }
}

/// Reads a CSV file's header when reading resumes past it.
fn read_header(file: &File, decoder: &mut Decoder, max: usize) {
    let mut buf = vec![0u8; max.min(1 << 20)];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    if let Some(len) = decoder.format().frame(&buf[..n]) {
        let _ = decoder.read_header(&buf[..len], 0);
    }
}
