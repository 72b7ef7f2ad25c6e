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

mod fds;
mod files;
mod resend;
mod state;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use lockstep_formats::record::Decoder;
use lockstep_formats::{ChangeEvent, Op, Record, SourceInfo, Value};
use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use self::files::{FileKey, Globs, Head};
use self::state::{Checkpoint, FileCp};
use super::{SourceContext, SourceThread, Stopping, BATCH_SIZE};
use crate::admin::metrics::TableCounters;
use crate::admin::telemetry::{CheckpointFailed, FileRotated, FileTruncated, RecordQuarantined};
use crate::clock::now_ms;
use crate::config::{StartAt, TableFrom, TailConfig};
use crate::pipeline::debounce::{Debouncer, Released};
use crate::pipeline::quarantine::{BadRecord, Quarantine};
use crate::pipeline::{Batch, Outgoing};

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
        let mut timeout = TICK.min(due).min(self.out.cfg.stat_interval);
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

    /// Finds files: new ones are opened and tracked, tracked ones that left the globs
    /// are marked gone. A directory that cannot be listed (no file descriptor left for
    /// it, permissions, I/O) tells nothing: the files in it stay as they were, and the
    /// checkpoint's files in it are looked for once it can be listed.
    fn scan(&mut self) {
        self.rescan = false;
        self.last_scan = Instant::now();
        let mut scan = files::scan(&self.out.cfg.paths);
        self.log_unlisted(&scan);
        files::prune_taken(&mut self.out.gz_taken);
        let mut found = std::mem::take(&mut scan.found);
        // Files resumed from the checkpoint are older than files seen for the first time.
        let cp = &self.out.cp.files;
        found.sort_by_key(|f| cp.get(&f.key).is_none_or(|c| c.retired_ms.is_some()));
        for t in &mut self.files {
            if !scan.unknown(&t.path) {
                t.matched = false;
            }
        }
        self.waiting_open = 0;
        // Every file the globs match now, opened or not (waiting for a descriptor).
        let matched: std::collections::HashSet<FileKey> = found.iter().map(|f| f.key).collect();
        for f in found {
            if let Some(t) = self
                .files
                .iter_mut()
                .find(|t| t.key == f.key && !t.recovered)
            {
                t.matched = true;
                t.gone_since = None;
                t.path = f.path;
                continue;
            }
            if !self.track(&f.path, true) {
                self.waiting_open += 1;
                if self.first_scan {
                    self.waited_at_start.insert(f.key);
                }
            }
        }
        if !self.first_scan {
            // One that vanished before it had a descriptor: its inode number may be a
            // new file's later.
            self.waited_at_start.retain(|k| matched.contains(k));
            // Copies made while stopped of files that waited for a descriptor at the
            // start and were found truncated once opened (see `track_file`).
            let truncated = std::mem::take(&mut self.truncated_while_stopped);
            if let (false, Some(since)) = (truncated.is_empty(), self.out.cp.written) {
                self.track_rotated_while_stopped(&truncated, since, true);
            }
        }
        if self.waiting_open > 0 {
            // Looked for again as soon as files are read to their end and can be closed.
            self.rescan = true;
        }
        let unknown = |c: &FileCp| c.retired_ms.is_none() && scan.unknown(&c.path);
        if self.first_scan && !self.out.cp.files.values().any(unknown) {
            // Files from the checkpoint that the globs no longer match: rotated to another
            // name while the agent was stopped. Finish them first. (A file the globs
            // match that waits for a descriptor is not missing; nor is one whose
            // directory cannot be listed: the next scan looks again.)
            let missing: Vec<FileCp> = self
                .out
                .cp
                .files
                .values()
                .filter(|c| {
                    c.retired_ms.is_none()
                        && !matched.contains(&FileKey {
                            dev: c.dev,
                            ino: c.ino,
                        })
                        && !self.files.iter().any(|t| {
                            t.key
                                == FileKey {
                                    dev: c.dev,
                                    ino: c.ino,
                                }
                        })
                })
                .cloned()
                .collect();
            let mut rotated_live = Vec::new();
            let mut recovered = Vec::new();
            for c in missing {
                let key = FileKey {
                    dev: c.dev,
                    ino: c.ino,
                };
                // A compressed rotation is never opened as text: its rest is recovered.
                // Not a file that took its inode number since (deleted while stopped,
                // the number reused: its birth time differs): then it vanished.
                let same_birth = |p: &PathBuf| {
                    let born = fs::metadata(p).ok().and_then(|m| m.created().ok());
                    match (c.born_ns, state::born_ns(born)) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
                };
                let found = match files::find_in_dir(&c.path, key) {
                    Ok(found) => found.filter(|p| !files::is_compressed(p) && same_birth(p)),
                    Err(e) => {
                        // Kept in the checkpoint: the next start looks again.
                        tracing::error!(
                            "source {}: {} (checkpointed at byte {}) is not in the globs, and its directory cannot be listed to find where it went ({e}); it is kept for the next start: fix the cause (raise LimitNOFILE when out of file descriptors), then restart",
                            self.out.cx.name,
                            c.path.display(),
                            c.offset
                        );
                        continue;
                    }
                };
                match found {
                    Some(p) => {
                        tracing::info!(
                            "source {}: {} was rotated to {} while stopped; finishing it",
                            self.out.cx.name,
                            c.path.display(),
                            p.display()
                        );
                        self.track(&p, false);
                        rotated_live.push(c.path.clone());
                    }
                    None => {
                        // Files rotated after it while stopped are found next to it.
                        rotated_live.push(c.path.clone());
                        // Rotated and compressed while stopped (`compress`): the rest is
                        // read from the `.gz` whose content starts as the file did.
                        let since = self.out.cp.written;
                        // A newer generation of its inode number being read at the stop
                        // (a new file in it, while this one's last events were not all
                        // acknowledged), gone as well: its content, compressed since, is
                        // found by its head and read among the rests, under its ids.
                        // (Each of them, when it was taken again and again.)
                        let newer: Vec<state::NextGen> = c.later();
                        for n in newer {
                            let mut c2 = c.clone();
                            (c2.gen, c2.offset, c2.fp) = (n.gen, 0, n.fp);
                            (c2.head, c2.born_ns, c2.next) = (Some(n.head), n.born_ns, None);
                            c2.between.clear();
                            match self.out.gunzip(&c.path, n.head, 0, since) {
                                Ok(Some(g)) => recovered.push((g, c2)),
                                Ok(None) => {}
                                Err(e) => self.gz_wait(GzWait::Rest { c: c2, gone: false }, &e),
                            }
                        }
                        let g = match c.head {
                            Some(h) => self.out.gunzip(&c.path, h, c.offset, since),
                            None => Ok(None),
                        };
                        match g {
                            Ok(Some(g)) => recovered.push((g, c)),
                            Ok(None) => self.vanished(&c),
                            // Kept in the checkpoint: tried again (and at the next start).
                            Err(e) => self.gz_wait(GzWait::Rest { c, gone: true }, &e),
                        }
                    }
                }
            }
            // Oldest first; of one file, its older generation first when the times tie
            // (file timestamps are coarse).
            recovered.sort_by_key(|(g, c)| (g.mtime, c.gen));
            for (g, c) in recovered {
                self.track_recovered(g, &c);
            }
            if let Some(since) = self.out.cp.written {
                self.track_compressed_while_stopped(since);
            }
            if let Some(since) = self.out.cp.written {
                let rotated: Vec<(PathBuf, Option<Head>)> =
                    rotated_live.into_iter().map(|p| (p, None)).collect();
                self.track_rotated_while_stopped(&rotated, since, false);
                // copytruncate while stopped: the copy of the checkpointed generation is
                // finished by the first read round; copies made after it hold
                // generations never seen.
                let truncated = std::mem::take(&mut self.truncated_while_stopped);
                self.track_rotated_while_stopped(&truncated, since, true);
            }
            if !self.out.cp.existed {
                // Record the starting offsets now, so that start_at applies only once.
                self.out.cp.dirty = true;
                self.out.checkpoint(true);
            }
            self.first_scan = false;
        }
        for t in &mut self.files {
            if !t.matched && t.gone_since.is_none() {
                t.gone_since = Some(Instant::now());
                FileRotated {
                    source: &self.out.cx.name,
                    file: &t.path,
                }
                .emit(&self.out.cx.counters);
            }
        }
    }

    /// Files created and rotated out of the globs while the agent was stopped: the live
    /// file of a rotated checkpointed one was rotated again before the start. They are
    /// unknown to the checkpoint; found by name next to it (see `files::rotated_since`)
    /// and read whole, oldest first, before the live files.
    /// With a head: the live file was truncated, and the copy that starts with that head
    /// is left to [`Out::finish_from_copy`].
    ///
    /// `truncated` (copytruncate while stopped): the oldest such file of a live file
    /// that had nothing of its generation read, or acknowledged, at the stop (no head,
    /// offset 0: empty then, or killed before the checkpoint caught up) is that
    /// generation's copy: it is read under the live file's ids, from 0, so that events
    /// already sent are sent again with their ids (JetStream drops them), and the live
    /// file goes on with a new generation. Unless the live file starts with all of it (a
    /// plain copy of the file as it is, not truncated).
    fn track_rotated_while_stopped(
        &mut self,
        live: &[(PathBuf, Option<Head>)],
        since: SystemTime,
        truncated: bool,
    ) {
        // Copies of generations already read (their head and length), which a
        // checkpoint written within the same clock tick as the copy does not tell apart
        // by time.
        let read: Vec<(Head, u64)> = self.out.cp.files.values().filter_map(|c| c.prev).collect();
        for (l, head) in live {
            let mut generation = truncated;
            if truncated && head.is_some() && self.track_later_generations(l, since) {
                // The live file is the newest generation read at the stop: no copy was
                // made of it since.
                generation = false;
            }
            for (p, key) in files::rotated_since(l, since) {
                // A retired entry is another file's when this one took its inode number
                // since (`delaycompress`: a new file in a dropped file's number, rotated
                // while stopped): its birth time differs, or else it is not the entry's
                // bytes.
                let same = |c: &FileCp| {
                    let born = fs::metadata(&p).ok().and_then(|m| m.created().ok());
                    match (c.born_ns, state::born_ns(born)) {
                        (Some(a), Some(b)) => a == b,
                        _ => File::open(&p).is_ok_and(|f| {
                            let size = f.metadata().map_or(0, |m| m.len());
                            size == c.offset
                                && c.head
                                    .is_some_and(|h| matches!(h.recheck(&f, size), Ok(Some(_))))
                        }),
                    }
                };
                // A copy already followed as a generation of the live file is known too.
                let known = self
                    .out
                    .cp
                    .files
                    .get(&key)
                    .is_some_and(|c| c.retired_ms.is_none() || same(c))
                    || self.files.iter().any(|t| t.key == key || t.path == p);
                if known || self.globs.matches(&p) {
                    continue;
                }
                let already_read = File::open(&p).is_ok_and(|f| {
                    let size = f.metadata().map_or(0, |m| m.len());
                    read.iter()
                        .any(|&(h, len)| len == size && matches!(h.recheck(&f, size), Ok(Some(_))))
                });
                if already_read {
                    continue;
                }
                let copy_of_checkpointed = head.is_some_and(|h| {
                    File::open(&p).is_ok_and(|f| {
                        let size = f.metadata().map_or(0, |m| m.len());
                        matches!(h.recheck(&f, size), Ok(Some(_)))
                    })
                });
                if copy_of_checkpointed {
                    continue;
                }
                if std::mem::take(&mut generation)
                    && self.copy_of_bare_generation(l, &p, head.is_some())
                {
                    continue;
                }
                tracing::info!(
                    "source {}: {} was written and rotated away while stopped; reading it whole",
                    self.out.cx.name,
                    p.display()
                );
                self.track(&p, false);
            }
        }
    }

    /// See [`Tail::track_rotated_while_stopped`]: `copy`, made while stopped, read as the
    /// generation of live file `live` that had nothing read or acknowledged at the stop.
    /// `false`: it is not (no such live file, or a plain copy of it as it is).
    fn copy_of_bare_generation(&mut self, live: &Path, copy: &Path, after: bool) -> bool {
        let Some(i) = self.files.iter().position(|t| {
            t.path == live
                && !t.recovered
                && t.gone_since.is_none()
                && (after || t.read_pos() == 0)
                // A new file in the inode number of the checkpointed one (`create`, not
                // `copytruncate`): the files rotated since are renamed files of their
                // own, not copies of a generation of it.
                && !(after && t.replaced)
                && t.blocked.is_none()
        }) else {
            return false;
        };
        let Ok(f) = File::open(copy) else {
            return false;
        };
        let Ok(m) = f.metadata() else { return false };
        let first = files::first_bytes(&f).unwrap_or_default();
        let t = &self.files[i];
        let now = t
            .file
            .as_deref()
            .and_then(|lf| files::first_bytes(lf).ok())
            .unwrap_or_default();
        let lsize = t
            .file
            .as_deref()
            .and_then(|lf| lf.metadata().ok())
            .map_or(0, |lm| lm.len());
        if first.is_empty() || (m.len() <= lsize && now.starts_with(&first)) {
            return false;
        }
        // With a head, the checkpointed generation is finished first (from its copy) by
        // the first read round: this copy is the one after it, or after the later
        // generations read at the stop whose copies were found (see
        // [`Tail::track_later_generations`]).
        let gen = t.gen + u32::from(after) + t.gen_skip;
        tracing::info!(
            "source {}: {} is the copy of generation {gen} of {}, which the checkpoint had not reached at the stop; reading it under that file's ids, then the file as a new generation",
            self.out.cx.name,
            copy.display(),
            live.display()
        );
        let key = t.key;
        self.track_copy(key, copy, f, &m, gen);
        let t = &mut self.files[i];
        if after {
            // Its truncation, found by the first read round, goes past this generation.
            t.gen_skip += 1;
        } else {
            // Read after its copy (the copy ranks first): the checkpoint moves on with it.
            self.out
                .new_generation(t, "copied and truncated while stopped", false);
        }
        true
    }

    /// Follows `copy` (open as `f`, with metadata `m`) whole as generation `gen` of file
    /// `key`: read under that file's ids, among the rests recovered at the start.
    fn track_copy(&mut self, key: FileKey, copy: &Path, f: File, m: &fs::Metadata, gen: u32) {
        let head = Head::default()
            .recheck(&f, m.len())
            .ok()
            .flatten()
            .unwrap_or_default();
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        let decoder = Decoder::new(self.out.cfg.format.clone());
        let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let t = Tracked::recovered(key, copy.to_owned(), f, (m.len(), mtime), order, decoder);
        self.files.push(Tracked { head, gen, ..t });
    }

    /// Live file `live`, checkpointed at a generation with a head and truncated since:
    /// the generations after that one which were already being read at the stop (the
    /// file was copytruncated again before their acknowledgements came; see
    /// `FileCp::between` and `FileCp::next`) are in copies made before or after the
    /// stop. Each is found by its head (a plain copy next to the file, else a `.gz`
    /// rotation) and read whole under the file's ids, in generation order after the
    /// rest of the checkpointed one, so that what was sent of it before the stop is sent
    /// again with the same ids. The live file itself may be the newest of them (not
    /// truncated since): it goes on as that generation, from 0; else as the one after.
    /// `true`: the live file is that newest generation.
    fn track_later_generations(&mut self, live: &Path, since: SystemTime) -> bool {
        let Some(i) = self.files.iter().position(|t| {
            t.path == live
                && !t.recovered
                && t.gone_since.is_none()
                && !t.replaced
                && t.blocked.is_none()
        }) else {
            return false;
        };
        let (key, gen) = (self.files[i].key, self.files[i].gen);
        let Some(c) = self.out.cp.files.get(&key).filter(|c| c.gen == gen) else {
            return false;
        };
        let later = c.later();
        let Some(newest) = later.last().map(|n| n.gen) else {
            return false;
        };
        let (head, offset, prev) = (c.head.unwrap_or_default(), c.offset, c.prev);
        // The copy of the checkpointed generation (its rest, read by the first read
        // round) and older copies are not later generations: a short head (a CSV header)
        // may start them too.
        let rest = files::find_copy(live, key, head, offset);
        let not_before = rest
            .as_ref()
            .and_then(|(_, f, _)| f.metadata().and_then(|m| m.modified()).ok());
        // A copy the globs match, followed from its end since it was made (see
        // `Out::copy_consumed`: everything in it was read from the live file, under that
        // file's ids) and resumed there: known, yet still the copy of its generation.
        let consumed = |p: &Path, k: &FileKey| {
            let mut known = self.files.iter().filter(|t| t.key == *k || t.path == p);
            let size = fs::metadata(p).map_or(u64::MAX, |m| m.len());
            known.clone().next().is_some()
                && known.all(|t| {
                    t.key == *k
                        && !t.recovered
                        && t.gone_since.is_none()
                        && t.read_pos() == size
                        && self
                            .out
                            .cp
                            .files
                            .get(k)
                            .is_some_and(|c| c.retired_ms.is_none() && c.offset == size)
                })
        };
        let mut candidates: Vec<(PathBuf, FileKey)> =
            files::rotated_since(live, SystemTime::UNIX_EPOCH)
                .into_iter()
                .filter(|(p, k)| {
                    rest.as_ref().is_none_or(|(r, _, _)| r != p)
                        && (consumed(p, k)
                            || (!self.files.iter().any(|t| t.key == *k || t.path == *p)
                                && !self.globs.matches(p)))
                        && fs::metadata(p).is_ok_and(|m| {
                            let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                            not_before.is_none_or(|t| mtime >= t)
                                && !prev.is_some_and(|(h, n)| {
                                    n == m.len()
                                        && File::open(p)
                                            .is_ok_and(|f| matches!(h.recheck(&f, n), Ok(Some(_))))
                                })
                        })
                })
                .collect();
        let live_first = self.files[i]
            .file
            .as_deref()
            .and_then(|f| files::first_bytes(f).ok())
            .unwrap_or_default();
        let mut live_is_newest = false;
        for n in later {
            let found = candidates.iter().position(|(p, _)| {
                File::open(p).is_ok_and(|f| {
                    let size = f.metadata().map_or(0, |m| m.len());
                    matches!(n.head.recheck(&f, size), Ok(Some(_)))
                })
            });
            if let Some(k) = found {
                let (p, _) = candidates.remove(k);
                let (Ok(f), Ok(m)) = (File::open(&p), fs::metadata(&p)) else {
                    continue;
                };
                tracing::info!(
                    "source {}: {} is the copy of generation {} of {}, read before the stop but not all acknowledged; reading it under that file's ids",
                    self.out.cx.name,
                    p.display(),
                    n.gen,
                    live.display()
                );
                self.track_copy(key, &p, f, &m, n.gen);
                continue;
            }
            if n.gen == newest && n.head.starts(&live_first) {
                live_is_newest = true;
                continue;
            }
            let mut c2 = self.out.cp.files[&key].clone();
            (c2.gen, c2.offset, c2.fp) = (n.gen, 0, n.fp);
            (c2.head, c2.next, c2.between) = (Some(n.head), None, Vec::new());
            match self.out.gunzip(live, n.head, 0, Some(since)) {
                Ok(Some(g)) => self.track_recovered(g, &c2),
                // Not decompressed yet (a full state directory): waited for, retried.
                Err(e) => self.gz_wait(GzWait::Rest { c: c2, gone: false }, &e),
                Ok(None) => tracing::warn!(
                    "source {}: generation {} of {} (read before the stop, not all acknowledged) was not found in its copies; whatever of it was not acknowledged is lost",
                    self.out.cx.name,
                    n.gen,
                    live.display()
                ),
            }
        }
        // The first read round finds the checkpointed generation truncated and moves the
        // file past these generations.
        self.files[i].gen_skip = newest - gen - u32::from(live_is_newest);
        live_is_newest
    }

    /// Follows the rest of a vanished file, decompressed from its `.gz` rotation, under
    /// the vanished file's ids from its checkpointed offset.
    fn track_recovered(&mut self, g: files::Gunzipped, c: &FileCp) {
        tracing::info!(
            "source {}: {} (checkpointed at byte {}) was compressed before it was read to its end; reading the rest, up to byte {}, from {}",
            self.out.cx.name,
            c.path.display(),
            c.offset,
            g.len,
            g.gz.display()
        );
        let key = FileKey {
            dev: c.dev,
            ino: c.ino,
        };
        let mut decoder = Decoder::new(self.out.cfg.format.clone());
        if decoder.needs_header() && c.offset > 0 {
            read_header(&g.file, &mut decoder, self.out.cfg.max_record_bytes);
        }
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        let t = Tracked::recovered(key, g.gz, g.file, (g.len, g.mtime), order, decoder);
        self.files.push(Tracked {
            fp: c.fp,
            head: c.head.unwrap_or_default(),
            gen: c.gen,
            offset: c.offset,
            ..t
        });
    }

    /// The rest of truncated file `i`'s generation, in `rest`, read as a recovered rest
    /// (under `i`'s ids, from its read position; see [`Tail::track_recovered`]) among the
    /// other rests, by the time it was last written.
    fn track_rest(&mut self, i: usize, rest: Rest) {
        let t = &self.files[i];
        tracing::info!(
            "source {}: {} was truncated, or replaced by a new file in its inode number, at byte {}; reading the rest, up to byte {}, from {} among the other rotations recovered at the start",
            self.out.cx.name,
            t.path.display(),
            t.read_pos(),
            rest.size,
            rest.path.display()
        );
        let mut decoder = Decoder::new(self.out.cfg.format.clone());
        if decoder.needs_header() && t.read_pos() > 0 {
            read_header(&rest.file, &mut decoder, self.out.cfg.max_record_bytes);
        }
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        let r = Tracked::recovered(
            t.key,
            rest.path,
            rest.file,
            (rest.size, rest.mtime),
            order,
            decoder,
        );
        self.files.push(Tracked {
            fp: t.fp,
            head: t.head,
            gen: t.gen,
            offset: t.read_pos(),
            ..r
        });
    }

    /// Compressed rotations written while the agent was stopped (modified since the
    /// checkpoint was last written) that start with no head the checkpoint or the files
    /// followed know: content written to a followed file after the stop and rotated and
    /// compressed before the start (copies `copytruncate` made of a file that was still
    /// empty at the stop, or a copy compressed by the very next rotation). Read whole,
    /// oldest first, after the rests recovered from the checkpoint's files and before
    /// every other file, under the `.gz` file's own ids.
    fn track_compressed_while_stopped(&mut self, since: SystemTime) {
        // Known: the heads of the files followed, and of the checkpoint's files but those
        // whose rest was just recovered from a `.gz`: every other `.gz` that starts as
        // such a vanished file did is a later generation (the same CSV header), unread.
        let recovered: Vec<FileKey> = self
            .files
            .iter()
            .filter(|t| t.recovered)
            .map(|t| t.key)
            .collect();
        let mut heads: Vec<Head> = self
            .out
            .cp
            .files
            .iter()
            .filter(|(k, _)| !recovered.contains(k))
            .filter_map(|(_, c)| c.head)
            .collect();
        heads.extend(self.files.iter().filter(|t| !t.recovered).map(|t| t.head));
        heads.retain(|h| h.len > 0);
        // Only rotations of the checkpointed files' own names (see `files::gz_family`).
        let mut families: Vec<PathBuf> = Vec::new();
        for c in self.out.cp.files.values() {
            if !files::is_compressed(&c.path) && !families.contains(&c.path) {
                families.push(c.path.clone());
            }
        }
        let mut gzs: Vec<(SystemTime, PathBuf, FileKey)> = Vec::new();
        for fam in &families {
            match files::gz_family(fam) {
                Ok(found) => {
                    for (m, p, k) in found {
                        if m >= since && !gzs.iter().any(|(_, q, _)| *q == p) {
                            gzs.push((m, p, k));
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    "source {}: cannot list the compressed rotations next to {}: {e}",
                    self.out.cx.name,
                    fam.display()
                ),
            }
        }
        gzs.sort();
        for (mtime, path, gz_key) in gzs {
            // Only the `.gz` files already being read are skipped (not those that merely
            // share an inode number with a vanished file the checkpoint knows).
            if self.out.gz_taken.contains(&(path.clone(), gz_key)) {
                continue;
            }
            let unknown = |first: &[u8]| !heads.iter().any(|h| h.starts(first));
            match self.out.gunzip_whole(&path, mtime, gz_key, unknown) {
                Ok(Whole::Read(g)) => self.track_compressed(g, gz_key),
                Ok(Whole::Known) => {}
                Ok(Whole::Gone) => self.gz_gone(&path),
                Err(e) => {
                    let heads = heads.clone();
                    let key = gz_key;
                    self.gz_wait(
                        GzWait::Whole {
                            path,
                            mtime,
                            key,
                            heads,
                        },
                        &e,
                    );
                }
            }
        }
    }

    fn track_compressed(&mut self, g: files::Gunzipped, gz_key: FileKey) {
        tracing::info!(
            "source {}: {} was written, rotated and compressed while stopped; reading it whole",
            self.out.cx.name,
            g.gz.display()
        );
        let path = g.gz.clone();
        self.track_gz_whole(g, path, gz_key);
    }

    /// A `.gz` written while stopped, deleted (logrotate's `rotate` count) before it
    /// could be read.
    fn gz_gone(&self, path: &Path) {
        tracing::warn!(
            "source {}: {} (a compressed rotation found at the start) was deleted before it could be read; its records were not read",
            self.out.cx.name,
            path.display()
        );
    }

    /// A compressed rotation found at the start that could not be decompressed (`why`):
    /// it waits, and no file is read until it is (see [`Tail::retry_gz`]).
    fn gz_wait(&mut self, w: GzWait, why: &str) {
        let what = match &w {
            GzWait::Rest { c, .. } => format!(
                "the rest of {} (checkpointed at byte {}, generation {})",
                c.path.display(),
                c.offset,
                c.gen
            ),
            GzWait::Whole { path, .. } => format!("{} (written while stopped)", path.display()),
        };
        tracing::error!(
            "source {}: {why}; {what} waits to be decompressed: no other file of this source is read until it is (they are newer), and it is tried again until it can be (and at the next start). Free space in {}",
            self.out.cx.name,
            self.out.cx.state_dir.join("checkpoints").display()
        );
        self.gz_waiting.push(w);
        self.gz_retry = Some(Retry::first());
        // The next start looks for it from the same time (see `Checkpoint::keep_since`).
        self.out.cp.keep_since = true;
    }

    /// A file of the checkpoint gone while stopped, with no `.gz` holding its rest.
    fn vanished(&mut self, c: &FileCp) {
        tracing::warn!(
            "source {}: {} (checkpointed at byte {}) is gone; whatever it held after that offset was not read",
            self.out.cx.name,
            c.path.display(),
            c.offset
        );
        let key = FileKey {
            dev: c.dev,
            ino: c.ino,
        };
        if let Some(e) = self.out.cp.files.get_mut(&key) {
            e.retired_ms = Some(now_ms());
            self.out.cp.dirty = true;
        }
    }

    /// Tries the decompressions that wait (see [`Tail::gz_wait`]) when they are due.
    /// `true` when none waits any more: files may be read.
    fn retry_gz(&mut self) -> bool {
        if self.gz_waiting.is_empty() {
            return true;
        }
        if !self.gz_retry.is_none_or(|r| r.due()) {
            return false;
        }
        let since = self.out.cp.written;
        let mut recovered = Vec::new();
        let mut failed = None;
        for w in std::mem::take(&mut self.gz_waiting) {
            if failed.is_some() {
                self.gz_waiting.push(w);
                continue;
            }
            match w {
                GzWait::Rest { c, gone } => {
                    let head = c.head.unwrap_or_default();
                    match self.out.gunzip(&c.path, head, c.offset, since) {
                        Ok(Some(g)) => recovered.push((g, c)),
                        Ok(None) if gone => self.vanished(&c),
                        Ok(None) => {}
                        Err(e) => {
                            failed = Some(e);
                            self.gz_waiting.push(GzWait::Rest { c, gone });
                        }
                    }
                }
                GzWait::Whole {
                    path,
                    mtime,
                    key,
                    heads,
                } => {
                    let unknown = |first: &[u8]| !heads.iter().any(|h| h.starts(first));
                    match self.out.gunzip_whole(&path, mtime, key, unknown) {
                        Ok(Whole::Read(g)) => self.track_compressed(g, key),
                        Ok(Whole::Known) => {}
                        Ok(Whole::Gone) => self.gz_gone(&path),
                        Err(e) => {
                            failed = Some(e);
                            let w = GzWait::Whole {
                                path,
                                mtime,
                                key,
                                heads,
                            };
                            self.gz_waiting.push(w);
                        }
                    }
                }
            }
        }
        recovered.sort_by_key(|(g, c)| (g.mtime, c.gen));
        for (g, c) in recovered {
            self.track_recovered(g, &c);
        }
        if let Some(e) = failed {
            tracing::debug!(
                "source {}: {} compressed rotation(s) still wait to be decompressed: {e}",
                self.out.cx.name,
                self.gz_waiting.len()
            );
            self.gz_retry = self.gz_retry.map(Retry::again);
            return false;
        }
        tracing::info!(
            "source {}: the compressed rotations that waited for room are decompressed; reading goes on",
            self.out.cx.name
        );
        self.gz_retry = None;
        self.out.cp.keep_since = false;
        self.out.cp.dirty = true;
        true
    }

    /// Follows the content of a `.gz` file, decompressed into `g`, read whole under the
    /// `.gz` file's own ids (its inode number, or that number with bit 62 flipped when a
    /// file still known has it).
    fn track_gz_whole(&mut self, g: files::Gunzipped, path: PathBuf, gz_key: FileKey) {
        self.out.gz_taken.push((path.clone(), gz_key));
        // Its inode number may be a vanished file's still in the checkpoint (or
        // followed for its rest): then it is kept apart under a number no file has.
        let taken = |k: &FileKey| {
            self.files.iter().any(|t| t.key == *k)
                || self.out.cp.files.get(k).is_some_and(|c| c.path != path)
        };
        let key = if taken(&gz_key) {
            FileKey {
                dev: gz_key.dev,
                ino: gz_key.ino ^ (1 << 62),
            }
        } else {
            gz_key
        };
        let fp = files::fingerprint(&g.file).ok().flatten();
        let head = Head::default()
            .recheck(&g.file, g.len)
            .ok()
            .flatten()
            .unwrap_or_default();
        let gen = self.out.cp.gen_for(&key);
        let c = FileCp::followed(key, path, fp, head, gen, 0, None);
        self.out.cp.insert(key, c.clone());
        self.track_recovered(g, &c);
    }

    /// Followed file `i` had nothing of its generation read and no head at the last look
    /// (`since`: its ctime then), and it changed: a `copytruncate` may have copied what
    /// was written meanwhile and truncated the file before the agent read a byte of it
    /// (the file never looks truncated: its read position is 0, and there is no head to
    /// find the copy by). Files next to it whose name is a rotation of its name (or the
    /// `.gz` of one), created after `since` (birth time: where the file system keeps
    /// none, nothing is found), unknown to the source (not followed, not in the
    /// checkpoint, not a `.gz` already taken), that start with no head a known file has
    /// and are not a plain snapshot of what the file holds now, are such copies: read
    /// whole, oldest first, under their own ids, before the file's new bytes.
    /// An error: such a copy could not be taken (a `.gz` that could not be decompressed,
    /// no file descriptor free); the copies after it are not looked at, and the file's
    /// new bytes must wait for the next look.
    fn copied_before_read(&mut self, i: usize, since: SystemTime) -> Result<(), String> {
        let t = &self.files[i];
        let (Some(dir), Some(name)) = (t.path.parent(), t.path.file_name()) else {
            return Ok(());
        };
        let name = name.to_string_lossy().into_owned();
        let live_path = t.path.clone();
        let now_first = t
            .file
            .as_deref()
            .and_then(|f| files::first_bytes(f).ok())
            .unwrap_or_default();
        let now_size = t.size;
        // A plain copy of the file as it is (`cp`, no truncation): its bytes are read
        // from the file itself.
        let snapshot = move |first: &[u8], len: u64| {
            len <= now_size && !first.is_empty() && now_first.starts_with(first)
        };
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(
                    "source {}: cannot list {} for copies of {}: {e}",
                    self.out.cx.name,
                    dir.display(),
                    live_path.display()
                );
                return Ok(());
            }
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let gz = n.strip_suffix(".gz");
            let path = e.path();
            if !files::looks_rotated(&name, gz.unwrap_or(&n))
                || (gz.is_none() && files::is_compressed(&path))
            {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            let Ok(born) = m.created() else { continue };
            // Made after the last look, and holding bytes written since: a `.gz` keeps
            // the time of the file it compressed (the rotation before this file, with
            // `create` + `compress`, is compressed after this file was created).
            let mtime = m.modified().unwrap_or(born);
            if !m.is_file() || m.len() == 0 || born <= since || mtime < since {
                continue;
            }
            let key = FileKey::of(&m);
            let known = self.files.iter().any(|o| o.key == key)
                || self
                    .out
                    .cp
                    .files
                    .get(&key)
                    .is_some_and(|c| c.retired_ms.is_none())
                || self
                    .out
                    .gz_taken
                    .iter()
                    .any(|(p, k)| *p == path && *k == key);
            if !known {
                found.push((born, path, key, gz.is_some(), mtime));
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        found.sort();
        // The heads of the files the source knows: a file that starts with one is not
        // new content (a copy of a generation already read, a CSV header aside: a head
        // covers the first 4 KiB, or the whole of a file shorter than that).
        let mut heads: Vec<Head> = self.files.iter().map(|o| o.head).collect();
        heads.extend(self.truncations.iter().map(|(h, _, _)| *h));
        heads.extend(
            self.out
                .cp
                .files
                .values()
                .filter(|c| c.retired_ms.is_none())
                .filter_map(|c| c.head),
        );
        heads.retain(|h| h.len > 0);
        let unknown = |first: &[u8]| !heads.iter().any(|h| h.starts(first));
        // Files read to their end and retired, and generations before the current one:
        // the same bytes (their whole length, or a full head's 4 KiB; a shorter head, a
        // CSV header, may begin any later file).
        let done: Vec<(Head, u64)> = self
            .out
            .cp
            .files
            .values()
            .flat_map(|c| {
                let retired = c.retired_ms.and(c.head).map(|h| (h, c.offset));
                [retired, c.prev].into_iter().flatten()
            })
            .filter(|(h, _)| h.len > 0)
            .collect();
        let read_before = |first: &[u8], len: u64| {
            done.iter()
                .any(|&(h, n)| (n == len || h.len as usize == files::HEAD_MAX) && h.starts(first))
        };
        for (_, path, key, gz, mtime) in found {
            if gz {
                let g = match self.out.gunzip_whole(&path, mtime, key, unknown)? {
                    Whole::Read(g) => g,
                    Whole::Known => continue,
                    Whole::Gone => {
                        self.gz_gone(&path);
                        continue;
                    }
                };
                let path = g.gz.clone();
                let first = files::first_bytes(&g.file).unwrap_or_default();
                if snapshot(&first, g.len) || read_before(&first, g.len) {
                    continue;
                }
                tracing::info!(
                    "source {}: {} was made of {} (copytruncate, then compressed) before a byte of it was read; reading it whole",
                    self.out.cx.name,
                    path.display(),
                    live_path.display()
                );
                self.track_gz_whole(g, path, key);
            } else {
                let Ok(f) = File::open(&path) else { continue };
                let first = files::first_bytes(&f).unwrap_or_default();
                let len = f.metadata().map_or(0, |m| m.len());
                if !unknown(&first) || snapshot(&first, len) || read_before(&first, len) {
                    continue;
                }
                tracing::info!(
                    "source {}: {} was made of {} (copytruncate) before a byte of it was read; reading it whole",
                    self.out.cx.name,
                    path.display(),
                    live_path.display()
                );
                let matched = self.globs.matches(&path);
                if !self.track(&path, matched) {
                    return Err(format!(
                        "no file descriptor is free to read {}, a copy of {}",
                        path.display(),
                        live_path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// File `i` was found truncated and the rest of its generation is in `copy` (or, when
    /// nothing was left to read, in the newest copy that starts with its head and holds
    /// what was read): copies made after that one (next to it, their name a rotation of
    /// its name, not compressed, unknown to the source) hold generations the agent never
    /// saw: the file was copytruncated again and again before this look (while the
    /// source waited on a full spool, say). They are read whole, oldest first, under the
    /// file's ids as the generations after its current one, before the file is read
    /// again from 0 as the generation after them.
    fn copies_after_truncation(&mut self, i: usize, copy: Option<PathBuf>) {
        let t = &self.files[i];
        // Generations already skipped for copies found at a start (the copies made since
        // the stop, and those of the generations read before it) are all accounted for.
        if t.head.len == 0 || t.recovered || t.gen_skip > 0 {
            return;
        }
        let copy = copy.or_else(|| {
            files::find_copy(&t.path, t.key, t.head, t.read_pos().saturating_sub(1))
                .map(|(p, _, _)| p)
        });
        let Some(copy) = copy else { return };
        let Ok(anchor) = fs::metadata(&copy) else {
            return;
        };
        let since = anchor.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        // Copies of generations already read: the heads of the truncations handled
        // lately, and what the checkpoint knows was read before.
        let mut heads: Vec<Head> = self.truncations.iter().map(|(h, _, _)| *h).collect();
        heads.push(t.head);
        heads.retain(|h| h.len > 0);
        // Files read to their end and retired, and generations before the current one
        // (as in [`Tail::copied_before_read`]).
        let done: Vec<(Head, u64)> = self
            .out
            .cp
            .files
            .values()
            .flat_map(|c| {
                let retired = c.retired_ms.and(c.head).map(|h| (h, c.offset));
                [retired, c.prev].into_iter().flatten()
            })
            .filter(|(h, _)| h.len > 0)
            .collect();
        let (key, live) = (t.key, t.path.clone());
        let mut found: Vec<(SystemTime, Option<SystemTime>, PathBuf, File, fs::Metadata)> =
            Vec::new();
        for (p, k) in files::rotated_since(&live, since) {
            if p == copy
                || self.globs.matches(&p)
                || self.files.iter().any(|o| o.key == k || o.path == p)
                || self
                    .out
                    .cp
                    .files
                    .get(&k)
                    .is_some_and(|c| c.retired_ms.is_none())
            {
                continue;
            }
            let (Ok(f), Ok(m)) = (File::open(&p), fs::metadata(&p)) else {
                continue;
            };
            let first = files::first_bytes(&f).unwrap_or_default();
            if first.is_empty()
                || heads.iter().any(|h| h.starts(&first))
                || done.iter().any(|&(h, n)| {
                    (n == m.len() || h.len as usize == files::HEAD_MAX) && h.starts(&first)
                })
            {
                continue;
            }
            let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((mtime, m.created().ok(), p, f, m));
        }
        found.sort_by_key(|a| (a.0, a.1));
        for (_, _, p, f, m) in found {
            let t = &mut self.files[i];
            let gen = t.gen + 1 + t.gen_skip;
            t.gen_skip += 1;
            tracing::info!(
                "source {}: {} was copytruncated again before it was read: {} holds generation {gen}, never read; reading it whole under that file's ids before the file",
                self.out.cx.name,
                live.display(),
                p.display()
            );
            self.track_copy(key, &p, f, &m, gen);
        }
    }

    /// Opens a file and tracks it. `false`: no file descriptor could be had for it (see
    /// `fds`); it waits for a later look.
    fn track(&mut self, path: &Path, matched: bool) -> bool {
        match self.open(path, !matched) {
            Ok(file) => {
                let order = self.discovered.fetch_add(1, Ordering::Relaxed);
                self.track_file(path, file, matched, order);
                true
            }
            Err(fds::OpenError::NoSlot) => false,
            Err(fds::OpenError::Io(e)) => {
                tracing::warn!(
                    "source {}: cannot open {}: {e}; trying again at the next scan",
                    self.out.cx.name,
                    path.display()
                );
                true
            }
        }
    }

    /// Opens `path` within the tail sources' budget of open files (`urgent`: a file that
    /// left the globs, which may go past it; see `fds`), first closing files of this
    /// source that are read to their end when the budget is spent.
    fn open(&mut self, path: &Path, urgent: bool) -> Result<fds::Held, fds::OpenError> {
        loop {
            match fds::Budget::global().open(path, urgent) {
                Err(fds::OpenError::NoSlot) if self.close_one() => {}
                r => return r,
            }
        }
    }

    /// Closes the file of this source that is read to its end, still matched by the globs
    /// and changed least recently (a file that never had a byte only after a second: it
    /// may be a copy `copytruncate` is about to fill). `false`: none can be closed.
    fn close_one(&mut self) -> bool {
        let now = Instant::now();
        let pick = self
            .files
            .iter_mut()
            .filter(|t| {
                closable(t)
                    && (!t.fresh || now.duration_since(t.changed_at) >= Duration::from_secs(1))
            })
            .min_by_key(|t| t.changed_at);
        match pick {
            Some(t) => {
                tracing::debug!(
                    "source {}: closing {} (read to its end) to open another file",
                    self.out.cx.name,
                    t.path.display()
                );
                t.file = None;
                true
            }
            None => false,
        }
    }

    /// Closes the files read to their end, still matched by the globs and unchanged for
    /// `close_idle` (for a second while a file waits for a descriptor: see `fds`). They
    /// are looked at by path from then on (see [`Tail::reopen`]).
    fn close_idle(&mut self) {
        let mut idle = self.out.cfg.close_idle;
        if fds::Budget::global().starved_lately() {
            idle = idle.min(Duration::from_secs(1));
        }
        let now = Instant::now();
        for t in &mut self.files {
            if closable(t) && now.duration_since(t.changed_at) >= idle {
                tracing::debug!(
                    "source {}: closing {} (read to its end, unchanged for {idle:?})",
                    self.out.cx.name,
                    t.path.display()
                );
                t.file = None;
            }
        }
    }

    /// Looks at closed file `i` by its path: reopens it when it changed, when it left the
    /// globs, or when its name now holds another file (then it is looked for by its inode
    /// in its directory: a rotation the watcher did not report). Returns whether it is
    /// open now. A closed file found nowhere once the globs were scanned again was
    /// deleted: it is dropped as read to its end.
    fn reopen(&mut self, i: usize) -> bool {
        let t = &self.files[i];
        let here = fs::metadata(&t.path)
            .ok()
            .filter(|m| FileKey::of(m) == t.key);
        let path = match here {
            Some(m)
                if t.gone_since.is_none()
                    && m.len() == t.size
                    && m.modified().ok() == Some(t.mtime) =>
            {
                return false;
            }
            Some(_) => t.path.clone(),
            None => match files::find_in_dir(&t.path, t.key) {
                Ok(Some(p)) => p,
                // The directory cannot be listed now (no descriptor free, …): where the
                // file went is not known, so it is not taken for deleted; looked for
                // again at the next round.
                Err(e) => {
                    tracing::debug!(
                        "source {}: cannot look for {} in its directory: {e}",
                        self.out.cx.name,
                        t.path.display()
                    );
                    self.waiting_reopen += 1;
                    return false;
                }
                Ok(None) if t.gone_since.is_none() => {
                    // The next scan tells whether the globs match it under another name.
                    self.rescan = true;
                    return false;
                }
                Ok(None) => {
                    let t = &mut self.files[i];
                    if t.nlink != 0 {
                        t.nlink = 0;
                        tracing::info!(
                            "source {}: {} was deleted (or moved to another directory) while closed, read to byte {}; whatever was written to it after it was closed was not read",
                            self.out.cx.name,
                            t.path.display(),
                            t.read_pos()
                        );
                    }
                    return false;
                }
            },
        };
        let urgent = t.gone_since.is_some() || !self.globs.matches(&path);
        let file = match self.open(&path, urgent) {
            Ok(f) => f,
            Err(fds::OpenError::NoSlot) => {
                self.waiting_reopen += 1;
                return false;
            }
            Err(fds::OpenError::Io(e)) => {
                tracing::warn!(
                    "source {}: cannot open {} again: {e}; trying again at the next look",
                    self.out.cx.name,
                    path.display()
                );
                return false;
            }
        };
        let Ok(m) = file.metadata() else { return false };
        if FileKey::of(&m) != self.files[i].key {
            // Renamed again between the look and the open: the next round looks again.
            return false;
        }
        self.files[i].path = path;
        self.reopened(i, file, &m);
        true
    }

    /// Closed file `i` is open again as `file`. Its identity was checked by device and
    /// inode; when its birth time differs too, the file it was was deleted while closed
    /// and a new one took its inode number: the next look handles that as a truncation
    /// (the old file's rest from a copy or `.gz` rotation, then the new one from byte 0
    /// as a new generation). Its head is checked at the next look (a truncation while
    /// closed).
    fn reopened(&mut self, i: usize, file: fds::Held, m: &fs::Metadata) {
        let born = m.created().ok();
        let t = &mut self.files[i];
        t.file = Some(file);
        t.suspect = true;
        t.changed_at = Instant::now();
        if matches!((t.born, born), (Some(a), Some(b)) if a != b) {
            tracing::info!(
                "source {}: {} was deleted while closed, read to byte {}, and a new file took its inode number; the rest of the old one is looked for in its rotations, then the new one is read from byte 0",
                self.out.cx.name,
                t.path.display(),
                t.read_pos()
            );
            t.born = born;
            t.replaced = true;
        }
    }

    /// Tracks an open file from now on (empty or not: it may be written and renamed away
    /// before the next look) and decides where reading starts. A file already tracked
    /// only takes the new name.
    fn track_file(&mut self, path: &Path, file: fds::Held, matched: bool, order: u64) {
        let Ok(meta) = file.metadata() else { return };
        if !meta.is_file() {
            return;
        }
        let key = FileKey::of(&meta);
        // Judged as at the first scan: found then, but it waited for a descriptor.
        let at_start = self.first_scan || self.waited_at_start.remove(&key);
        if let Some(i) = self.files.iter().position(|t| t.key == key && !t.recovered) {
            self.files[i].path = path.to_owned();
            if self.files[i].file.is_none() {
                // A closed file renamed (a rotation the watcher saw): open from now on.
                self.reopened(i, file, &meta);
            }
            return;
        }
        // None while the first line is incomplete (an empty file, as `create` makes).
        let fp = files::fingerprint(&file).ok().flatten();
        let size = meta.len();
        let name = &self.out.cx.name;
        let same = |c: &FileCp| {
            let first_line = (c.fp.is_some() && c.fp == fp) || (c.fp.is_none() && c.offset == 0);
            // A checkpoint from before heads were recorded: the first line alone, once.
            let head = c
                .head
                .is_none_or(|h| matches!(h.recheck(&file, size), Ok(Some(_))));
            first_line && head && size >= c.offset
        };
        let mut fp = fp;
        let mut old_head = None;
        let born = state::born_ns(meta.created().ok());
        let same_birth = |c: &FileCp| born.is_some() && c.born_ns == born;
        let replaced = |c: &FileCp| born.is_some() && c.born_ns.is_some() && c.born_ns != born;
        let has_head = |c: &FileCp| c.head.is_some_and(|h| h.len > 0);
        let mut force_truncated = false;
        // Dropped in this run (read to its end: `retiring`), its entry waiting for the
        // acks of its last events: the entry is still that file's, acknowledged short of
        // where it was read to. The same file seen again (its birth time says so: opened
        // again under its rotated name before it was deleted) goes on where it was read
        // to; a new file in its inode number (the old one was deleted) is a new
        // generation from 0. The entry stays as it is, so a stop before those acks
        // finishes the old file at the next start.
        let dropped = self.out.retiring.get(&key).copied().and_then(|(g, end)| {
            let c = self.out.cp.files.get(&key)?;
            if c.retired_ms.is_some() {
                None
            } else if same_birth(c) {
                Some((g, end))
            } else if replaced(c) {
                Some((g + 1, 0))
            } else {
                None
            }
        });
        let (gen, offset) = match (dropped, self.out.cp.files.get(&key)) {
            (Some(at), _) => at,
            (None, c) => match c {
                // Dropped (deleted, or left the globs and read to its end), and its inode
                // number now holds another file. The same file seen again (its birth time
                // says so: a rotation whose file event came after it was dropped) resumes
                // where it was, below.
                Some(c) if c.retired_ms.is_some() && !same_birth(c) => (c.gen + 1, 0),
                // Another file than the checkpointed one (which was deleted while the agent
                // was stopped, and whose inode number it took) is never taken for it, even
                // when it starts with the same bytes: it is handled as a truncation, below.
                Some(c) if same(c) && !(replaced(c) && has_head(c)) => {
                    if at_start && c.offset == 0 && c.head.is_none_or(|h| h.len == 0) {
                        // Empty when the agent stopped: copies made since (copytruncate)
                        // hold what was written to it meanwhile.
                        self.truncated_while_stopped.push((path.to_owned(), None));
                    }
                    (c.gen, c.offset)
                }
                // Truncated (copytruncate) while the agent was stopped: resume the old
                // generation where it was, with its fingerprint and head. The first read
                // round finds the truncation, reads the rest from the copy when there is one,
                // and starts the file again from 0.
                // The same for a new file in the inode number of a deleted one: the deleted
                // file's rest is looked for in its copies and `.gz` rotations first.
                Some(c) if has_head(c) => {
                    if replaced(c) {
                        tracing::info!(
                        "source {name}: {} is a new file in the inode number of {} (deleted, checkpointed at byte {}); the rest of that file is looked for in its rotations, then the new one is read from byte 0",
                        path.display(),
                        c.path.display(),
                        c.offset
                    );
                        force_truncated = true;
                    }
                    fp = c.fp;
                    old_head = c.head;
                    if at_start {
                        self.truncated_while_stopped.push((path.to_owned(), c.head));
                    }
                    (c.gen, c.offset)
                }
                Some(c) => {
                    FileTruncated {
                        source: name,
                        file: path,
                        was: c.offset,
                        now: size,
                    }
                    .emit(&self.out.cx.counters);
                    (c.gen + 1, 0)
                }
                None if at_start && self.first_start && self.out.cfg.start_at == StartAt::End => {
                    (0, files::end_of_last_line(&file, size).unwrap_or(0))
                }
                None => (0, 0),
            },
        };
        // A new file in the checkpointed one's inode number at a start: the generations
        // read after the checkpointed one before the stop are recovered first.
        let checkpointed = self.out.cp.files.get(&key).cloned();
        let skip = match (at_start && force_truncated, checkpointed) {
            (true, Some(c)) => self.recover_newer(&c, &file, size, born),
            _ => 0,
        };
        let head = old_head.unwrap_or_else(|| {
            Head::default()
                .recheck(&file, size)
                .ok()
                .flatten()
                .unwrap_or_default()
        });
        match dropped {
            Some((g, _)) => {
                self.out.cp.set_identity(key, g, fp, head, born);
                if offset == 0 {
                    // Reached once every event of the dropped file is acknowledged.
                    self.out.mark_at(key, g, 0);
                }
            }
            None => {
                let mut c = FileCp::followed(key, path.to_owned(), fp, head, gen, offset, born);
                // The same generation goes on: what is known of the one before stays, and
                // of those after it read before the stop (see
                // [`Tail::track_later_generations`]).
                if let Some(o) = self
                    .out
                    .cp
                    .files
                    .get(&key)
                    .filter(|o| o.gen == gen && o.retired_ms.is_none())
                {
                    (c.prev, c.next, c.between) = (o.prev, o.next, o.between.clone());
                }
                self.out.cp.insert(key, c);
            }
        }
        self.out.retiring.remove(&key);
        let mut decoder = Decoder::new(self.out.cfg.format.clone());
        if decoder.needs_header() && offset > 0 {
            read_header(&file, &mut decoder, self.out.cfg.max_record_bytes);
        }
        tracing::info!(
            "source {}: following {} from byte {offset}",
            self.out.cx.name,
            path.display()
        );
        self.files.push(Tracked {
            key,
            path: path.to_owned(),
            born: meta.created().ok(),
            changed_at: Instant::now(),
            file: Some(file),
            fp,
            head,
            suspect: old_head.is_some(),
            replaced: force_truncated,
            blocked: None,
            gen,
            offset,
            buf: Vec::new(),
            decoder,
            skipping: None,
            size,
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            matched,
            gone_since: if matched { None } else { Some(Instant::now()) },
            nlink: meta.nlink(),
            discovered: order,
            fresh: offset == 0,
            copy_wait: None,
            recovered: false,
            first: Vec::new(),
            bare_since: (offset == 0 && head.len == 0).then(|| ctime(&meta)),
            gen_skip: skip,
            rest_wait: None,
        });
    }

    /// At a start, a new file in the inode number of checkpoint entry `c` (its birth time
    /// differs; `create`, not `copytruncate`, whose copies are found otherwise): the
    /// newer generations of that number the agent was reading at the stop, while the
    /// entry waited for acknowledgements (`FileCp::later`), were rotated and compressed
    /// since. Each is recovered from its `.gz`, by its head, under its ids (as for a
    /// vanished file), up to the one the file itself is (its head and birth time). The
    /// generations the file's own next generation goes past: before, they were lost
    /// (torture seed 145, `create` + `compress` while the broker stalled).
    fn recover_newer(&mut self, c: &FileCp, file: &File, size: u64, born: Option<u64>) -> u32 {
        let since = self.out.cp.written;
        let newer: Vec<state::NextGen> = c.later();
        let mut skip = 0;
        for n in newer {
            let same_birth = n.born_ns.is_none() || born.is_none() || n.born_ns == born;
            if same_birth && matches!(n.head.recheck(file, size), Ok(Some(_))) {
                // The file is this generation: it goes on as it.
                return n.gen.saturating_sub(c.gen + 1);
            }
            let mut c2 = c.clone();
            (c2.gen, c2.offset, c2.fp) = (n.gen, 0, n.fp);
            (c2.head, c2.born_ns, c2.next) = (Some(n.head), n.born_ns, None);
            c2.between.clear();
            match self.out.gunzip(&c.path, n.head, 0, since) {
                Ok(Some(g)) => self.track_recovered(g, &c2),
                Ok(None) => tracing::warn!(
                    "source {}: generation {} of {} (being read at the stop) is gone; whatever of it was not acknowledged was not read",
                    self.out.cx.name,
                    n.gen,
                    c.path.display()
                ),
                Err(e) => self.gz_wait(GzWait::Rest { c: c2, gone: false }, &e),
            }
            skip = n.gen.saturating_sub(c.gen);
        }
        skip
    }

    /// Reads every file that has new bytes, oldest first. Returns the bytes read.
    fn read_round(&mut self) -> Result<u64, Stopping> {
        self.waiting_reopen = 0;
        if !self.retry_gz() {
            // Rotations older than every file wait to be decompressed.
            return Ok(0);
        }
        for i in 0..self.files.len() {
            if self.files[i].file.is_none() && !self.reopen(i) {
                continue;
            }
            if self.files[i].rest_wait.is_some_and(|r| !r.due()) {
                continue;
            }
            let t = &mut self.files[i];
            let Some(f) = t.file.as_deref() else { continue };
            let Ok(m) = f.metadata() else { continue };
            // A recovered rest keeps the time its rotation was last written (its unnamed
            // file's own time is when it was decompressed): rests are read in that order.
            let mtime = if t.recovered {
                t.mtime
            } else {
                m.modified().unwrap_or(t.mtime)
            };
            let changed = m.len() != t.size || mtime != t.mtime || t.suspect;
            if changed {
                t.changed_at = Instant::now();
            }
            t.size = m.len();
            t.mtime = mtime;
            t.nlink = m.nlink();
            t.suspect = false;
            // Cheap: at most one 4 KiB read of a file that changed. It finds a truncation
            // even when the file grew back past the read position before this look.
            let head = if changed {
                match t.head.recheck(f, t.size) {
                    Ok(h) => h,
                    // Unreadable now: judge by the size alone this time.
                    Err(_) => Some(t.head),
                }
            } else {
                Some(t.head)
            };
            // Nothing of this generation read and no head, and the file changed since the
            // last look (written, truncated): what was written may already be in a copy.
            let bare_was = t.bare_since.take();
            let now_ctime = ctime(&m);
            let truncated = t.size < t.read_pos() || head.is_none() || t.replaced;
            t.replaced = false;
            if let Some(since) = bare_was.filter(|&c| c != now_ctime) {
                let bare = t.read_pos() == 0 && t.head.len == 0 && !truncated;
                if bare && t.blocked.is_none() && t.copy_wait.is_none() && !t.recovered {
                    self.ingest();
                    if let Err(e) = self.copied_before_read(i, since) {
                        // Looked for again from the same time; the file's new bytes wait.
                        self.files[i].bare_since = Some(since);
                        self.wait_for_rest(i, &e);
                        continue;
                    }
                }
            }
            if truncated {
                // copytruncate: what was not read yet is in the copy. Read it from there,
                // as the same file (same ids), before the file starts again from 0. A new
                // file held as a possible copy of it (a glob that matches the copies) is
                // taken first; then one found next to it, then a compressed one.
                // The copy's file event may have come in since the loop's last look.
                self.ingest();
                let held = self.held_copy(i);
                // Rests of vanished files recovered at a start wait to be read: this
                // generation's rest is read among them, in the order they were written
                // (a file deleted while stopped whose inode number the live file took
                // may be newer than another vanished file, or older), not before them.
                let rests_wait = self
                    .files
                    .iter()
                    .any(|o| o.recovered && o.size > o.read_pos());
                let t = &self.files[i];
                let whole = t.buf.is_empty() && t.skipping.is_none() && t.blocked.is_none();
                let rest = match self.out.find_rest(t, held) {
                    Ok(rest) => rest,
                    Err(e) => {
                        // Its new bytes wait for the rest (see `Tracked::rest_wait`); the
                        // truncation is handled again at the next try.
                        self.files[i].replaced = true;
                        self.wait_for_rest(i, &e);
                        continue;
                    }
                };
                let (used, read) = if rests_wait && whole {
                    let t = &self.files[i];
                    match rest {
                        Some(rest) if rest.size <= t.read_pos() => (rest.used, None),
                        Some(rest) => {
                            let read = rest.size.max(t.read_pos());
                            let used = rest.used.as_ref().and_then(|(p, f, n)| {
                                f.try_clone().ok().map(|f| (p.clone(), f, *n))
                            });
                            self.track_rest(i, rest);
                            (used, Some(read))
                        }
                        None => (None, None),
                    }
                } else {
                    let t = &mut self.files[i];
                    (self.out.finish_from_copy(t, rest)?, None)
                };
                let after = used.as_ref().map(|(p, _, _)| p.clone());
                if let Some((path, file, size)) = used {
                    self.copy_consumed(&path, file, size);
                }
                self.copies_after_truncation(i, after);
                let t = &mut self.files[i];
                if t.head.len > 0 {
                    let upto = read.unwrap_or(t.read_pos());
                    self.truncations.push((t.head, upto, Instant::now()));
                }
                FileTruncated {
                    source: &self.out.cx.name,
                    file: &t.path,
                    was: t.read_pos(),
                    now: t.size,
                }
                .emit(&self.out.cx.counters);
                // With the rest (or a later generation's copy) still to read, the
                // checkpoint must not move to the new generation before it: their own
                // positions move it there.
                let key = t.key;
                let pending = self
                    .files
                    .iter()
                    .any(|o| o.recovered && o.key == key && o.size > o.read_pos());
                let t = &mut self.files[i];
                self.out
                    .new_generation(t, "truncated", read.is_none() && !pending);
            }
            let t = &mut self.files[i];
            if t.rest_wait.take().is_some() {
                tracing::info!(
                    "source {}: what {} waited for is found; reading goes on",
                    self.out.cx.name,
                    t.path.display()
                );
            }
            if let (false, Some(h)) = (truncated, head) {
                t.head = h;
            }
            note_first(t);
            if t.fp.is_none() {
                t.fp = t
                    .file
                    .as_deref()
                    .and_then(|f| files::fingerprint(f).ok().flatten());
            }
            let born = state::born_ns(t.born);
            self.out.cp.set_identity(t.key, t.gen, t.fp, t.head, born);
            if t.read_pos() == 0 && t.head.len == 0 && !t.recovered {
                t.bare_since = Some(now_ctime);
            }
        }
        self.judge_new_files();
        let mut order: Vec<usize> = (0..self.files.len())
            .filter(|&i| {
                let t = &self.files[i];
                t.copy_wait.is_none()
                    && (t.size > t.read_pos() || t.blocked.is_some() || t.rest_wait.is_some())
            })
            .collect();
        // Rests and copies recovered from rotations and files that left the globs (they
        // were rotated away) first, by the time they were last written (a rest by its
        // rotation's; when times tie, a rest first), then the files in the globs by
        // modification time; then by discovery (file timestamps are coarse: a rotated
        // file and its successor often share one). A rotated file being finished is
        // older than the copies of later generations of the live file (seed 5000: they
        // were read first, and older events of keys came after newer ones).
        let rank = |t: &Tracked| (t.gone_since.is_none(), t.mtime, !t.recovered, t.discovered);
        order.sort_by(|&a, &b| rank(&self.files[a]).cmp(&rank(&self.files[b])));
        // The rests and copies of one file's generations, in generation order whatever
        // their times say (a copy made within the clock tick of the one before it).
        let rests: Vec<usize> = (0..order.len())
            .filter(|&k| self.files[order[k]].recovered)
            .collect();
        for &k in &rests {
            let key = self.files[order[k]].key;
            let slots: Vec<usize> = rests
                .iter()
                .copied()
                .filter(|&j| self.files[order[j]].key == key)
                .collect();
            let mut of_key: Vec<usize> = slots.iter().map(|&j| order[j]).collect();
            of_key.sort_by_key(|&i| (self.files[i].gen, self.files[i].discovered));
            for (j, i) in slots.into_iter().zip(of_key) {
                order[j] = i;
            }
        }
        let mut total = 0;
        for i in order {
            if self.files[i].rest_wait.is_some() {
                // It and the files after it wait for older content (see `rest_wait`).
                break;
            }
            total += self.out.read_file(&mut self.files[i])?;
            self.out.refresh_identity(&mut self.files[i]);
            let t = &self.files[i];
            if t.size > t.read_pos() || t.blocked.is_some() {
                // Not read to its end in this round (a long backlog, a record waiting for
                // the quarantine): files after it wait, so a rotated file is finished
                // before its successor is read.
                break;
            }
        }
        self.drop_finished();
        Ok(total)
    }

    /// File `i`'s new bytes wait for older content that could not be had (`why`): a `.gz`
    /// that could not be decompressed, a copy no descriptor was free for. Tried again
    /// with backoff; logged at the first try.
    fn wait_for_rest(&mut self, i: usize, why: &str) {
        let name = &self.out.cx.name;
        let t = &mut self.files[i];
        match t.rest_wait {
            Some(r) => {
                tracing::debug!("source {name}: {} still waits: {why}", t.path.display());
                t.rest_wait = Some(r.again());
            }
            None => {
                tracing::error!(
                    "source {name}: {why}; {} (read to byte {}) and the files after it wait for it: tried again until it can be had. Free space in {} (or raise LimitNOFILE when out of file descriptors)",
                    t.path.display(),
                    t.read_pos(),
                    self.out.cx.state_dir.join("checkpoints").display()
                );
                t.rest_wait = Some(Retry::first());
            }
        }
    }

    /// Stops following files that left the globs and are read to their end: at once when
    /// deleted, after `rotate_wait` when renamed away (a writer may still add to them).
    fn drop_finished(&mut self) {
        let rotate_wait = self.out.cfg.rotate_wait;
        let mut i = 0;
        while i < self.files.len() {
            let t = &self.files[i];
            let done = match t.gone_since {
                Some(since) => {
                    t.size == t.read_pos()
                        && t.blocked.is_none()
                        && t.copy_wait.is_none()
                        && t.rest_wait.is_none()
                        // A closed file is read to its end only once opened again (its
                        // size is the one it had when it was closed), unless deleted.
                        && (t.file.is_some() || t.nlink == 0)
                        && (t.nlink == 0 || since.elapsed() >= rotate_wait)
                }
                None => false,
            };
            if !done {
                i += 1;
                continue;
            }
            let mut t = self.files.swap_remove(i);
            if !t.buf.is_empty() {
                let reason = "incomplete last record of a file that was rotated away or deleted";
                let (off, len) = (t.offset, t.buf.len() as u64);
                let buf = std::mem::take(&mut t.buf);
                t.offset += len;
                self.out
                    .set_aside(&mut t, off, buf, len, reason.to_owned(), off + len);
                if t.blocked.is_some() {
                    // Kept until the quarantine takes it.
                    self.files.push(t);
                    continue;
                }
            }
            tracing::info!(
                "source {}: done with {}",
                self.out.cx.name,
                t.path.display()
            );
            // The rest of a file still followed (truncated, or replaced by a new file in
            // its inode number) leaves that file's entry alone.
            // So does the rest of an older generation while a newer one's is still read.
            let later = |o: &Tracked| o.key == t.key && (!o.recovered || o.gen > t.gen);
            if !(t.recovered && self.files.iter().any(later)) {
                self.out.retiring.insert(t.key, (t.gen, t.offset));
            }
        }
    }

    /// Checks each new file, once it has bytes and before anything is read from it,
    /// against the files followed: one that starts as a followed file does may be the
    /// copy `copytruncate` is making of it (with a glob that matches the copies). It is
    /// held, unread, until that file is found truncated (then it is the copy: see
    /// [`Tail::held_copy`]) or for [`COPY_WAIT`] (then it is a new file and read from 0:
    /// a CSV file with the same header, a plain `cp`). Also ends the waits that are over.
    fn judge_new_files(&mut self) {
        let now = Instant::now();
        self.truncations
            .retain(|(_, _, at)| now.duration_since(*at) < COPY_WAIT);
        for i in 0..self.files.len() {
            let t = &self.files[i];
            let held = t.copy_wait.is_some();
            if !held && (!t.fresh || t.size == 0 || t.recovered) {
                continue;
            }
            let Some(f) = t.file.as_deref() else { continue };
            let first = files::first_bytes(f).ok();
            if !held {
                // The copy of a generation whose truncation was already handled: what it
                // holds up to `read` was read (from the file, or from this copy found by
                // name or compressed); only what lies past it is read, under its own ids.
                let late = first.as_deref().and_then(|first| {
                    self.truncations
                        .iter()
                        .find(|(h, _, _)| h.len > 0 && h.starts(first))
                        .map(|&(_, read, _)| read)
                });
                if let Some(read) = late {
                    let t = &mut self.files[i];
                    t.fresh = false;
                    t.offset = read.min(t.size);
                    if let (true, Some(f)) = (t.decoder.needs_header() && t.offset > 0, &t.file) {
                        read_header(f, &mut t.decoder, self.out.cfg.max_record_bytes);
                    }
                    tracing::info!(
                        "source {}: {} is the copy of a file whose truncation was already handled; following it from byte {}",
                        self.out.cx.name,
                        t.path.display(),
                        t.offset
                    );
                    let (key, gen, offset) = (t.key, t.gen, t.offset);
                    self.out.cp.advance(key, gen, offset);
                    continue;
                }
            }
            // The followed file it starts as, if any. Looked at again on every round while
            // it is held: a new file that only began like another (a CSV header) is
            // released as soon as its bytes differ.
            let of = first.as_deref().and_then(|first| {
                self.files
                    .iter()
                    .enumerate()
                    .find(|&(j, o)| {
                        j != i
                            && !o.fresh
                            && o.copy_wait.is_none()
                            && !o.recovered
                            && starts_as(first, o)
                    })
                    .map(|(_, o)| o.path.clone())
            });
            let name = &self.out.cx.name;
            let t = &mut self.files[i];
            t.fresh = false;
            match (t.copy_wait, of) {
                (Some(until), Some(_)) if now < until => {}
                (Some(_), of) => {
                    t.copy_wait = None;
                    let why = if of.is_some() {
                        format!("no followed file starting the same way was truncated within {COPY_WAIT:?}")
                    } else {
                        "its content differs from every followed file's".to_owned()
                    };
                    tracing::info!(
                        "source {name}: {} is not a copy ({why}); reading it as a new file",
                        t.path.display()
                    );
                }
                (None, Some(of)) => {
                    tracing::info!(
                        "source {name}: {} starts as {} does; held as its possible copy until that file is found truncated, or for {COPY_WAIT:?}",
                        t.path.display(),
                        of.display()
                    );
                    t.copy_wait = Some(now + COPY_WAIT);
                }
                (None, None) => {}
            }
        }
    }

    /// After file `i` was found truncated: a new file not read yet (held as a possible
    /// copy, or not yet checked) that starts with `i`'s head, the newest such: the copy
    /// `copytruncate` made of it.
    fn held_copy(&self, i: usize) -> Option<(PathBuf, File, u64)> {
        let t = &self.files[i];
        if t.head.len == 0 {
            return None;
        }
        let c = self
            .files
            .iter()
            .enumerate()
            .filter(|&(j, c)| {
                j != i
                    && !c.recovered
                    && (c.copy_wait.is_some() || (c.fresh && c.read_pos() == 0))
                    && c.file.as_deref().is_some_and(|f| {
                        f.metadata()
                            .is_ok_and(|m| matches!(t.head.recheck(f, m.len()), Ok(Some(_))))
                            // A copy made before the file grew: the beginning of what it held.
                            || (c.copy_wait.is_some()
                                && t.first.len() == t.head.len as usize
                                && files::first_bytes(f).is_ok_and(|b| {
                                    !b.is_empty()
                                        && b.len() < t.first.len()
                                        && t.first.starts_with(&b)
                                }))
                    })
            })
            .max_by_key(|(_, c)| c.discovered)?
            .1;
        let f = c.file.as_deref()?;
        let size = f.metadata().ok()?.len();
        Some((c.path.clone(), f.try_clone().ok()?, size))
    }

    /// A copy that what a truncated file had not read yet was read from: it holds nothing
    /// else, so it is never read itself. Followed (or, when the globs match it, followed
    /// from now on) from its end.
    fn copy_consumed(&mut self, path: &Path, file: File, size: u64) {
        let Ok(m) = file.metadata() else { return };
        let key = FileKey::of(&m);
        let fp = files::fingerprint(&file).ok().flatten();
        let head = Head::default()
            .recheck(&file, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Some(c) = self.files.iter_mut().find(|c| c.key == key && !c.recovered) {
            tracing::info!(
                "source {}: {} is the copy of a truncated file; following it from byte {size}",
                self.out.cx.name,
                path.display()
            );
            if c.read_pos() < size {
                c.offset = size;
                c.buf.clear();
                c.skipping = None;
            }
            c.fresh = false;
            c.copy_wait = None;
            c.fp = fp;
            c.head = head;
            if c.file.is_none() {
                c.file = Some(fds::Budget::global().adopt(file));
                c.changed_at = Instant::now();
            }
            if let (true, Some(f)) = (c.decoder.needs_header() && c.offset > 0, &c.file) {
                read_header(f, &mut c.decoder, self.out.cfg.max_record_bytes);
            }
            let (gen, offset) = (c.gen, c.offset);
            let born = state::born_ns(m.created().ok());
            self.out.cp.set_identity(key, gen, fp, head, born);
            self.out.cp.advance(key, gen, offset);
            return;
        }
        if !self.globs.matches(path) {
            return;
        }
        // Not seen yet (its file event is still on its way): recorded as read to its end,
        // so that it is followed from there when it is.
        let gen = self.out.cp.gen_for(&key);
        self.out.cp.insert(
            key,
            FileCp::followed(
                key,
                path.to_owned(),
                fp,
                head,
                gen,
                size,
                state::born_ns(m.created().ok()),
            ),
        );
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        self.track_file(path, fds::Budget::global().adopt(file), true, order);
    }

    /// Says when a scan first cannot list a directory of the globs, and when it can again.
    fn log_unlisted(&mut self, scan: &files::Scan) {
        let name = &self.out.cx.name;
        for (dir, e) in &scan.unlisted {
            if self.unlisted {
                tracing::debug!("source {name}: still cannot list {}: {e}", dir.display());
            } else {
                tracing::warn!(
                    "source {name}: cannot list {}: {e}; the files followed in it are kept as they are and it is listed again at the next scan. If the agent is out of file descriptors, raise LimitNOFILE (or `ulimit -n`)",
                    dir.display()
                );
            }
        }
        let unlisted = !scan.unlisted.is_empty();
        if self.unlisted && !unlisted {
            tracing::info!("source {name}: the directories of the globs can be listed again");
        }
        self.unlisted = unlisted;
    }

    /// Says when files start or stop waiting for a file descriptor (see `fds`).
    fn log_waiting(&mut self) {
        let waiting = self.waiting_open + self.waiting_reopen;
        if waiting == self.waiting_logged {
            return;
        }
        let b = fds::Budget::global();
        if waiting > 0 && self.waiting_logged == 0 {
            let (soft, _) = fds::limits().unwrap_or((0, 0));
            tracing::warn!(
                "source {}: {waiting} file(s) wait for a file descriptor: the tail sources hold {} open, their share ({}) of the limit of {soft} open files (RLIMIT_NOFILE); files read to their end are closed to make room, so the others are read in turn, more slowly. Raise LimitNOFILE (or `ulimit -n`) to follow this many files at once",
                self.out.cx.name,
                b.open_now(),
                b.limit(),
            );
        } else if waiting == 0 {
            tracing::info!(
                "source {}: no file waits for a file descriptor any more",
                self.out.cx.name
            );
        }
        self.waiting_logged = waiting;
    }

    fn publish_status(&self) {
        let w = self.out.cx.watermark.get();
        let mut lag_bytes = 0u64;
        let files: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|t| {
                let acked = self.out.cp.files.get(&t.key).map_or(0, |c| {
                    if c.gen == t.gen {
                        c.offset
                    } else {
                        0
                    }
                });
                lag_bytes += t.size.saturating_sub(acked);
                serde_json::json!({
                    "path": t.path, "size": t.size, "read": t.read_pos(), "acknowledged": acked,
                    "generation": t.gen, "following": t.gone_since.is_none(),
                    "open": t.file.is_some(),
                })
            })
            .collect();
        let oldest = self
            .out
            .pending
            .iter()
            .find(|p| p.seq > w)
            .or(self.out.held.front())
            .map(|p| p.captured_ms);
        let lag_seconds = oldest.map_or(0, |ms| (now_ms() - ms).max(0) / 1000);
        let c = &self.out.cx.counters;
        c.lag_bytes.store(lag_bytes, Ordering::Relaxed);
        c.lag_seconds.store(lag_seconds, Ordering::Relaxed);
        self.out.cx.status.set(
            &self.out.cx.name,
            serde_json::json!({
                "kind": "tail", "files": files, "lag_bytes": lag_bytes, "lag_seconds": lag_seconds,
                "files_open": self.files.iter().filter(|t| t.file.is_some()).count(),
                "files_waiting": self.waiting_open + self.waiting_reopen,
                "events_sent": self.out.seq, "events_acknowledged": w,
                "held_keys": self.out.deb.held(),
                "quarantined": c.quarantined.load(Ordering::Relaxed),
                "last_error": self.out.last_error,
            }),
        );
    }
}

impl Out {
    /// The whole content of `.gz` file `key` (modified at `mtime`, last seen at `path`)
    /// when its first bytes are `want`ed, decompressed into the state directory. The file
    /// is found by its inode and time wherever logrotate renamed it since (it may have
    /// waited for room while logrotate ran: seed 21159). A failure (a full disk) is shown
    /// in the status; the caller logs it, and tries again later.
    fn gunzip_whole(
        &mut self,
        path: &Path,
        mtime: SystemTime,
        key: FileKey,
        want: impl Fn(&[u8]) -> bool,
    ) -> Result<Whole, String> {
        let tmp = self.cx.state_dir.join("checkpoints");
        let beat = self.cx.beat.clone();
        // A rename between the look-up and the open is looked up again.
        for _ in 0..3 {
            let now = match files::find_gz_again(path, key, mtime) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(Whole::Gone),
                Err(e) => {
                    return self
                        .gz_result(Err(e), || {
                            format!("cannot list the rotations next to {}", path.display())
                        })
                        .map(|_| Whole::Known)
                }
            };
            let r = files::gunzip(&now, mtime, key, &want, 0, &tmp, &|| beat.beat());
            let renamed = matches!(r, Ok(None))
                && !std::fs::metadata(&now).is_ok_and(|m| FileKey::of(&m) == key);
            if renamed {
                continue;
            }
            let g = self.gz_result(r, || {
                format!("cannot decompress {} into {}", now.display(), tmp.display())
            })?;
            return Ok(g.map_or(Whole::Known, Whole::Read));
        }
        Err(format!(
            "{} keeps being renamed while it is opened",
            path.display()
        ))
    }

    /// A decompression's result, its error (with `what` was done) kept for the status;
    /// the status's error is cleared once one succeeds.
    fn gz_result(
        &mut self,
        r: std::io::Result<Option<files::Gunzipped>>,
        what: impl FnOnce() -> String,
    ) -> Result<Option<files::Gunzipped>, String> {
        const GZ: &str = "cannot decompress";
        match r {
            Ok(g) => {
                if self
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with(GZ))
                {
                    self.last_error = None;
                }
                Ok(g)
            }
            Err(e) => {
                let msg = format!("{GZ}: {}: {e}", what());
                self.last_error = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Takes a file's fingerprint and head as they are now (after a read: the checkpoint
    /// must know the content it points into, in case the file is truncated next).
    fn refresh_identity(&mut self, t: &mut Tracked) {
        // A closed file's identity was taken when it was last read.
        let Some(f) = t.file.as_deref() else { return };
        if t.fp.is_none() {
            t.fp = files::fingerprint(f).ok().flatten();
        }
        if (t.head.len as usize) < files::HEAD_MAX {
            if let Ok(m) = f.metadata() {
                if let Ok(Some(h)) = t.head.recheck(f, m.len()) {
                    t.head = h;
                }
            }
        }
        note_first(t);
        self.cp
            .set_identity(t.key, t.gen, t.fp, t.head, state::born_ns(t.born));
    }

    /// Starts `t` again from byte 0 under a new generation (new ids): it was truncated, or
    /// a new file took its inode number while it was closed. A record cut off at the end
    /// of the old generation is set aside.
    fn new_generation(&mut self, t: &mut Tracked, why: &str, mark: bool) {
        if !t.buf.is_empty() {
            // A record cut off by the truncation, with no copy that holds its end.
            let reason = format!("incomplete last record of a file that was {why}");
            let (off, len) = (t.offset, t.buf.len() as u64);
            let data = std::mem::take(&mut t.buf);
            t.offset += len;
            self.set_aside(t, off, data, len, reason, off + len);
        }
        t.gen += 1 + std::mem::take(&mut t.gen_skip);
        t.offset = 0;
        t.buf.clear();
        t.skipping = None;
        t.fp = None;
        t.head = t
            .file
            .as_deref()
            .and_then(|f| Head::default().recheck(f, t.size).ok().flatten())
            .unwrap_or_default();
        t.decoder = Decoder::new(self.cfg.format.clone());
        t.fresh = false;
        // The checkpoint moves to the new generation only once every event of the old
        // one is acknowledged: a stop before that finishes it at the next start.
        if mark {
            self.mark_at(t.key, t.gen, 0);
        }
    }

    /// After a truncation of `t`: reads the rest of `t`'s generation, with `t`'s ids,
    /// from the copy logrotate's `copytruncate` made of it (found by [`Out::find_rest`]).
    /// Returns the uncompressed copy it used.
    fn finish_from_copy(
        &mut self,
        t: &mut Tracked,
        rest: Option<Rest>,
    ) -> Result<Option<(PathBuf, File, u64)>, Stopping> {
        let Some(rest) = rest else {
            return Ok(None);
        };
        let Rest {
            path,
            file: copy,
            size,
            used,
            ..
        } = rest;
        if size > t.read_pos() {
            tracing::info!(
                "source {}: {} was truncated at byte {}; reading the rest, up to byte {size}, from its copy {}",
                self.cx.name,
                t.path.display(),
                t.read_pos(),
                path.display()
            );
        }
        let own = t.file.replace(fds::Budget::global().adopt(copy));
        let own_size = std::mem::replace(&mut t.size, size);
        let mut r = Ok(());
        while t.read_pos() < size && t.blocked.is_none() {
            match self.read_file(t) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        t.file = own;
        t.size = own_size;
        r.map(|()| used)
    }

    /// After a truncation of `t`: the copy that holds the rest of `t`'s generation:
    /// `held` (a new file held as its possible copy), else a file in the same directory
    /// that starts with `t`'s head and is longer than what was read, else a `.gz`
    /// rotation whose content does (the copy was compressed before it was read). An
    /// error: that `.gz` could not be decompressed (a full state directory).
    fn find_rest(
        &mut self,
        t: &Tracked,
        held: Option<(PathBuf, File, u64)>,
    ) -> Result<Option<Rest>, String> {
        if t.head.len == 0 || t.blocked.is_some() {
            return Ok(None);
        }
        let plain = held.or_else(|| files::find_copy(&t.path, t.key, t.head, t.read_pos()));
        Ok(Some(match plain {
            Some((path, copy, size)) => {
                let used = copy.try_clone().ok().map(|f| (path.clone(), f, size));
                let mtime = copy
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Rest {
                    path,
                    file: copy,
                    size,
                    mtime,
                    used,
                }
            }
            None => match self.gunzip(&t.path, t.head, t.read_pos(), None)? {
                Some(g) => Rest {
                    path: g.gz,
                    file: g.file,
                    size: g.len,
                    mtime: g.mtime,
                    used: None,
                },
                None => return Ok(None),
            },
        }))
    }

    /// [`files::find_gz`]: the rest of a file past `from`, from a compressed rotation
    /// next to `path` that starts with `head`. A failure (a full disk) is shown in the
    /// status; the caller logs it, and tries again later.
    fn gunzip(
        &mut self,
        path: &Path,
        head: Head,
        from: u64,
        since: Option<SystemTime>,
    ) -> Result<Option<files::Gunzipped>, String> {
        let tmp = self.cx.state_dir.join("checkpoints");
        let beat = self.cx.beat.clone();
        let r = files::find_gz(path, head, from, &tmp, &self.gz_taken, since, &|| {
            beat.beat()
        });
        let g = self.gz_result(r, || {
            format!(
                "the rest of {} (after byte {from}) from its compressed rotation, into {}",
                path.display(),
                tmp.display()
            )
        })?;
        if let Some(g) = &g {
            self.gz_taken.push((g.gz.clone(), g.gz_key));
        }
        Ok(g)
    }

    /// Reads one file from its position up to its end (or `READ_SLICE` bytes).
    fn read_file(&mut self, t: &mut Tracked) -> Result<u64, Stopping> {
        let mut read = 0u64;
        let max = self.cfg.max_record_bytes;
        if !self.retry_blocked(t) {
            return Ok(0);
        }
        // Bytes read before a stop at a blocked record are framed first.
        let mut first = true;
        while read < READ_SLICE && t.blocked.is_none() {
            if read > 0 && !still_same(t) {
                // Truncated (and perhaps grown back past the read position) while this
                // read went on, e.g. while the source waited on a full spool: the next
                // round starts it again from 0.
                t.suspect = true;
                break;
            }
            let have = t.buf.len();
            let at = t.read_pos();
            t.buf.resize(have + CHUNK, 0);
            let got = match t.file.as_deref() {
                Some(f) => f.read_at(&mut t.buf[have..], at),
                None => Ok(0),
            };
            let n = match got {
                Ok(n) => n,
                Err(e) => {
                    t.buf.truncate(have);
                    self.last_error = Some(format!("reading {}: {e}", t.path.display()));
                    tracing::error!(
                        "source {}: cannot read {}: {e}",
                        self.cx.name,
                        t.path.display()
                    );
                    break;
                }
            };
            t.buf.truncate(have + n);
            if n == 0 && !(first && have > 0) {
                break;
            }
            first = false;
            read += n as u64;
            let mut pos = 0usize;
            loop {
                if let Some(start) = t.skipping {
                    match t.buf[pos..].iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            pos += i + 1;
                            let end = t.offset + pos as u64;
                            t.skipping = None;
                            let reason =
                                format!("record longer than max_record_bytes ({max} bytes)");
                            self.quarantine_long(t, start, end - start, reason);
                            if t.blocked.is_some() {
                                break;
                            }
                        }
                        None => {
                            pos = t.buf.len();
                            break;
                        }
                    }
                }
                let rest = &t.buf[pos..];
                match t.decoder.format().frame(rest) {
                    Some(len) if len > max => {
                        let start = t.offset + pos as u64;
                        let reason = format!("record longer than max_record_bytes ({max} bytes)");
                        self.quarantine_long(t, start, len as u64, reason);
                        pos += len;
                        if t.blocked.is_some() {
                            break;
                        }
                    }
                    Some(len) => {
                        let at = t.offset + pos as u64;
                        self.record(t, pos, len, at)?;
                        pos += len;
                        if t.blocked.is_some() {
                            break;
                        }
                    }
                    None if rest.len() > max => {
                        // Over-long and still no end: discard up to its newline.
                        t.skipping = Some(t.offset + pos as u64);
                        pos = t.buf.len();
                        break;
                    }
                    None => break,
                }
            }
            // What was framed (or skipped) is consumed; a partial record stays.
            t.buf.drain(..pos);
            t.offset += pos as u64;
        }
        Ok(read)
    }

    /// Turns one framed record into an event (or a quarantine entry).
    fn record(&mut self, t: &mut Tracked, pos: usize, len: usize, at: u64) -> Result<(), Stopping> {
        let end = at + len as u64;
        let bytes = &t.buf[pos..pos + len];
        if t.decoder.needs_header() {
            match t.decoder.read_header(bytes, at) {
                Ok(()) => self.mark(t, end),
                Err(e) => {
                    let data = bytes.to_vec();
                    self.set_aside(t, at, data, len as u64, e.reason, end);
                }
            }
            return Ok(());
        }
        let rec = match t.decoder.decode(bytes, at) {
            Ok(r) => r,
            Err(e) => {
                let data = bytes.to_vec();
                self.set_aside(t, at, data, len as u64, e.reason, end);
                return Ok(());
            }
        };
        match self.event(t, rec, at) {
            Ok(()) => {
                // The event's own position: safe once it is acknowledged.
                self.mark(t, end);
                if self.batch.len() >= BATCH_SIZE {
                    // Review fix: the checkpoint must know this file's first bytes as
                    // far as they are read before its events are handed on.
                    self.refresh_identity(t);
                    self.flush()?;
                }
            }
            Err(reason) => {
                let data = t.buf[pos..pos + len].to_vec();
                self.set_aside(t, at, data, len as u64, reason, end);
            }
        }
        Ok(())
    }

    /// Maps a record to an event and queues it for the sink.
    fn event(&mut self, t: &Tracked, rec: Record, at: u64) -> Result<(), String> {
        let fp = t.fp.unwrap_or(0);
        let position = format!("{:x}.{:x}.{fp:016x}.{}@{at}", t.key.dev, t.key.ino, t.gen);
        let (ev, info) = self.build(rec, position)?;
        let now = ev.ts_ms;
        self.deb
            .push(ev, info, now, Instant::now(), &mut self.released);
        self.emit();
        Ok(())
    }

    /// Builds the event of a record at `position`: its table, op and key, mapped. The
    /// error is the reason to quarantine the record.
    fn build(
        &mut self,
        mut rec: Record,
        position: String,
    ) -> Result<(ChangeEvent, Arc<TableInfo>), String> {
        let table = match &self.cfg.table {
            TableFrom::Fixed(name) => name.clone(),
            TableFrom::Field(f) => match rec.remove(f) {
                Some(v) => {
                    value_text(&v).ok_or_else(|| format!("table field `{f}` is not text"))?
                }
                None => return Err(format!("no table field `{f}`")),
            },
        };
        let op = match &self.cfg.op_field {
            None => Op::Create,
            Some(f) => {
                let v = rec.remove(f).ok_or_else(|| format!("no op field `{f}`"))?;
                let code = value_text(&v).ok_or_else(|| format!("op field `{f}` is not text"))?;
                match self
                    .cfg
                    .op_map
                    .get(&code)
                    .copied()
                    .or_else(|| Op::from_code(&code))
                {
                    Some(op) => op,
                    None => {
                        return Err(format!(
                            "op field `{f}` has `{code}`, which is not c, u, d, r or in op_map"
                        ))
                    }
                }
            }
        };
        let key = if self.cfg.key.is_empty() {
            None
        } else {
            let mut k = Record::with_capacity(self.cfg.key.len());
            for name in &self.cfg.key {
                match rec.get(name) {
                    Some(v) => k.push(name.clone(), v.clone()),
                    None => return Err(format!("no key field `{name}`")),
                }
            }
            Some(k)
        };
        let (before, after) = if op == Op::Delete {
            (Some(rec), None)
        } else {
            (None, Some(rec))
        };
        let now = now_ms();
        let info = self.table(&table)?.clone();
        let mut ev = ChangeEvent {
            op,
            key,
            before,
            after,
            source: SourceInfo {
                agent: self.agent.clone(),
                name: self.name.clone(),
                kind: self.kind.clone(),
                table: info.name.clone(),
                position,
                ts_ms: now,
                snapshot: false,
            },
            ts_ms: now,
        };
        self.cx.map.apply(&mut ev)?;
        Ok((ev, info))
    }

    /// Encodes what the debouncer released into the batch.
    fn emit(&mut self) {
        for r in self.released.drain(..) {
            let Some(ev) = r.event else { continue };
            self.seq += 1;
            let info = &r.extra;
            let msg = self.cx.encoder.outgoing(
                &ev,
                self.seq,
                &info.subject,
                &info.counters,
                r.captured_ms,
            );
            self.batch.push(msg);
        }
    }

    /// Releases held keys that are due and the positions the debouncer no longer holds.
    fn tick(&mut self) {
        if self.deb.held() > 0 {
            self.deb.due(Instant::now(), &mut self.released);
            self.emit();
        }
        let low = self.deb.low();
        while self.held.front().is_some_and(|p| p.ord < low) {
            let mut p = self.held.pop_front().expect("front exists");
            p.seq = self.seq;
            self.pending.push_back(p);
        }
    }

    /// A table's name after mapping, subject and counters. A table past `max_tables`
    /// (tables named by `table_field`) is refused: the error is the reason to quarantine
    /// its record, so a file cannot make state and metric series without bound.
    fn table(&mut self, table: &str) -> Result<&Arc<TableInfo>, String> {
        if !self.tables.contains_key(table) {
            if self.tables.len() >= self.cfg.max_tables {
                let mut shown: String = table.chars().take(64).collect();
                if shown.len() < table.len() {
                    shown.push('…');
                }
                return Err(format!(
                    "table `{shown}` would be table {} of this source, over max_tables = {} \
                     (raise max_tables if the files really name that many tables)",
                    self.tables.len() + 1,
                    self.cfg.max_tables
                ));
            }
            let name = self.cx.map.table(table);
            let info = TableInfo {
                name: Arc::from(name),
                subject: self.cx.encoder.subject(name),
                counters: self.cx.metrics.table(&self.cx.name, name),
            };
            self.tables.insert(table.to_owned(), Arc::new(info));
        }
        Ok(&self.tables[table])
    }

    /// Queues a position to checkpoint once every change read so far has left the
    /// debouncer and its event is acknowledged: an event's own end, or a position with no
    /// event of its own (a header, a quarantined record), which is safe once everything
    /// before it is.
    fn mark(&mut self, t: &Tracked, end: u64) {
        self.mark_at(t.key, t.gen, end);
    }

    /// [`Out::mark`] for generation `gen` of file `key`.
    fn mark_at(&mut self, key: FileKey, gen: u32, end: u64) {
        let ord = self.deb.pushed();
        if self.held.is_empty() && ord < self.deb.low() {
            self.pending.push_back(PendingPos {
                ord,
                seq: self.seq,
                key,
                gen,
                end,
                captured_ms: now_ms(),
            });
            return;
        }
        // Held. Past HELD_MARKS entries a position replaces the last one of its file:
        // the checkpoint then moves in coarser steps, but this queue stays small however
        // many records arrive while a key is held for `max_delay`.
        if self.held.len() >= HELD_MARKS {
            if let Some(b) = self.held.back_mut() {
                if (b.key, b.gen) == (key, gen) {
                    b.ord = ord;
                    b.end = end;
                    return;
                }
            }
        }
        self.held.push_back(PendingPos {
            ord,
            seq: 0,
            key,
            gen,
            end,
            captured_ms: now_ms(),
        });
    }

    /// Writes a bad record to the quarantine and moves the position past it; when the
    /// quarantine cannot be written, the record is kept and reading this file stops at it
    /// until a retry succeeds (the position never passes a record that is nowhere).
    fn set_aside(
        &mut self,
        t: &mut Tracked,
        offset: u64,
        mut data: Vec<u8>,
        full_len: u64,
        reason: String,
        end: u64,
    ) {
        data.truncate(self.cfg.max_record_bytes);
        let b = Blocked {
            offset,
            data,
            full_len,
            reason,
            end,
            gen: t.gen,
            retry_at: Instant::now() + QUARANTINE_RETRY.0,
            backoff: QUARANTINE_RETRY.0,
        };
        if self.put_quarantine(t, &b) {
            self.mark(t, end);
        } else {
            t.blocked = Some(b);
        }
    }

    /// Tries the quarantine write of a file's blocked record when it is due; true when
    /// the file has no blocked record (any more).
    fn retry_blocked(&mut self, t: &mut Tracked) -> bool {
        let Some(mut b) = t.blocked.take() else {
            return true;
        };
        if Instant::now() < b.retry_at {
            t.blocked = Some(b);
            return false;
        }
        if self.put_quarantine(t, &b) {
            tracing::info!(
                "source {}: the quarantine {} is writable again; reading {} goes on after byte {}",
                self.cx.name,
                self.quarantine.path().display(),
                t.path.display(),
                b.offset
            );
            self.mark_at(t.key, b.gen, b.end);
            return true;
        }
        b.backoff = (b.backoff * 2).min(QUARANTINE_RETRY.1);
        b.retry_at = Instant::now() + b.backoff;
        t.blocked = Some(b);
        false
    }

    /// One quarantine write: counted and logged when done, logged and shown in the
    /// status's `last_error` when not.
    fn put_quarantine(&mut self, t: &Tracked, b: &Blocked) -> bool {
        let bad = BadRecord {
            file: &t.path,
            offset: b.offset,
            reason: &b.reason,
            data: &b.data,
            full_len: b.full_len,
        };
        if let Err(e) = self.quarantine.put(&bad) {
            let msg = format!(
                "cannot write the bad record at byte {} of {} to the quarantine {}: {e}; \
                 reading that file waits at it and retries (free space or fix the directory)",
                b.offset,
                t.path.display(),
                self.quarantine.path().display()
            );
            tracing::error!("source {}: {msg}", self.cx.name);
            self.last_error = Some(format!("quarantine: {msg}"));
            return false;
        }
        if self
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("quarantine"))
        {
            self.last_error = None;
        }
        RecordQuarantined {
            source: &self.cx.name,
            file: &t.path,
            offset: b.offset,
            reason: &b.reason,
        }
        .emit(&self.cx.counters);
        true
    }

    /// Quarantines an over-long record, keeping its first `max_record_bytes`.
    fn quarantine_long(&mut self, t: &mut Tracked, offset: u64, len: u64, reason: String) {
        let keep = (len as usize).min(self.cfg.max_record_bytes);
        let mut head = vec![0u8; keep];
        let n = t
            .file
            .as_deref()
            .map_or(0, |f| f.read_at(&mut head, offset).unwrap_or(0));
        head.truncate(n);
        self.set_aside(t, offset, head, len, reason, offset + len);
    }

    /// Hands the current batch to the sink, waiting while its channel is full.
    fn flush(&mut self) -> Result<(), Stopping> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // The checkpoint knows the content of every event before the event can become
        // durable (see `Checkpoint::identity_dirty`).
        if self.cp.identity_dirty {
            self.checkpoint(true);
            // Not handed on while the checkpoint cannot be written (a full disk): a crash
            // would leave these events durable and their content unknown. The source
            // thread waits, backing off from 100 ms to 5 s (nothing else for it to do
            // meanwhile), beating its watchdog and leaving at once on shutdown.
            let mut backoff = Duration::from_millis(100);
            while self.cp.identity_dirty {
                if *self.cx.shutdown.borrow() {
                    return Err(Stopping);
                }
                self.cx.beat.beat();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                self.apply_acks();
                self.checkpoint(true);
            }
        }
        let batch = Batch {
            source: self.cx.index,
            msgs: std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_SIZE)),
        };
        let mut batch = Some(batch);
        loop {
            if self.cx.offer(&mut batch)? {
                return Ok(());
            }
            // The sink is behind (or the broker is away): keep checkpointing meanwhile.
            self.apply_acks();
            self.checkpoint(false);
        }
    }

    /// Moves acknowledged positions into the checkpoint.
    fn apply_acks(&mut self) {
        let w = self.cx.watermark.get();
        while let Some(p) = self.pending.front() {
            if p.seq > w {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            self.cp.advance(p.key, p.gen, p.end);
        }
        if !self.retiring.is_empty() {
            let now = now_ms();
            let cp = &mut self.cp;
            self.retiring
                .retain(|key, (gen, end)| match cp.files.get_mut(key) {
                    Some(e) if (e.gen, e.offset) >= (*gen, *end) => {
                        e.retired_ms = Some(now);
                        cp.dirty = true;
                        false
                    }
                    Some(_) => true,
                    None => false,
                });
        }
    }

    /// Writes the checkpoint if it changed (at most every `CHECKPOINT_EVERY`, unless forced).
    fn checkpoint(&mut self, force: bool) {
        if !self.cp.dirty || (!force && self.last_cp.elapsed() < CHECKPOINT_EVERY) {
            return;
        }
        self.last_cp = Instant::now();
        let r = self
            .quarantine
            .sync()
            .and_then(|()| self.cp.write(now_ms()));
        match r {
            Ok(()) => {
                if self
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("checkpoint"))
                {
                    self.last_error = None;
                }
            }
            Err(e) => {
                CheckpointFailed {
                    source: &self.cx.name,
                    path: &self.cp.path,
                    error: &e,
                }
                .emit(&self.cx.counters);
                self.last_error = Some(format!("checkpoint: {e}"));
            }
        }
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

/// What the watcher thread saw since the source last looked.
#[derive(Default)]
struct Seen {
    /// Files opened the moment they appeared in the globs or were renamed into or out of
    /// them: held from then on, a file written and rotated away before the source's next
    /// look is still read.
    opened: Vec<(PathBuf, fds::Held, u64)>,
    /// A file may have appeared or gone (or events were lost): scan the globs.
    structural: bool,
}

/// Most files held in [`Seen::opened`] between two looks; past it the scan finds them.
const SEEN_MAX: usize = 4096;

/// Watches the directories of the globs. On the watcher's own thread, at once, it opens
/// every file created in (or renamed into) the globs and every file renamed out of them,
/// so that none is missed however fast logrotate turns; data changes only wake the loop.
fn watch(
    source: String,
    patterns: &[String],
    globs: Arc<Globs>,
    seen: Arc<Mutex<Seen>>,
    discovered: Arc<AtomicU64>,
    wake: crossbeam_channel::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let structural = match &res {
            Ok(ev) => {
                ev.need_rescan()
                    || matches!(
                        ev.kind,
                        EventKind::Create(_)
                            | EventKind::Remove(_)
                            | EventKind::Modify(ModifyKind::Name(_))
                            | EventKind::Other
                    )
            }
            Err(_) => true,
        };
        if structural {
            let mut s = match seen.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            s.structural = true;
            if let Ok(ev) = &res {
                let open = match ev.kind {
                    EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                        ev.paths
                            .first()
                            .filter(|p| globs.matches(p))
                            .map(|p| (p, false))
                    }
                    // A rename out of the globs (`app.log` to `app.log.1`): follow it (it
                    // may be compressed or deleted soon, so past the budget if need be).
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match &ev.paths[..] {
                        [from, to] if globs.matches(from) && !files::is_compressed(to) => {
                            Some((to, !globs.matches(to)))
                        }
                        _ => None,
                    },
                    _ => None,
                };
                if let Some((p, urgent)) = open {
                    if s.opened.len() < SEEN_MAX {
                        match fds::Budget::global().open(p, urgent) {
                            Ok(f) => {
                                // Numbered now, in event order: the order files were created.
                                let order = discovered.fetch_add(1, Ordering::Relaxed);
                                s.opened.push((p.clone(), f, order));
                            }
                            // No descriptor free: the scan finds it (and says how many wait).
                            Err(fds::OpenError::NoSlot) => {}
                            // Gone already (deleted, renamed again): the scan looks again.
                            Err(fds::OpenError::Io(e))
                                if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(fds::OpenError::Io(e)) => {
                                tracing::warn!("source {source}: cannot open {}: {e}", p.display());
                            }
                        }
                    }
                }
            }
        }
        // One pending wake-up is enough: the loop takes everything in `seen`.
        let _ = wake.try_send(());
    })?;
    for p in patterns {
        let (root, recursive) = files::watch_root(p);
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = w.watch(&root, mode) {
            tracing::debug!(
                "cannot watch {}: {e}; relying on periodic checks",
                root.display()
            );
        }
    }
    Ok(w)
}
