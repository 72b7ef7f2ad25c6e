//! The CI instance of the torture suite: a fixed list of seeds, run by the normal test
//! command, that covers every source family (tail jsonl and csv with logrotate's create
//! and copytruncate, dateext, compress, truncation and late files; trigger on
//! PostgreSQL natively and on MariaDB and SQLite over ODBC, in keys and rows mode, with
//! and without debounce; poll over ODBC on all three, full and cursor; two sources on one
//! database, trigger + trigger and trigger + poll, on all three), the workload additions
//! (binary values, a big transaction, capped here at 2,000 rows, and its update; rows just
//! under and just over the broker's `max_payload` and a poll source's `max_value_bytes`)
//! and every fault kind (kill -9 and SIGTERM of lockstep, the broker killed -9 and
//! restarted, the proxy dropping and stalling the agent's connection), against both
//! nats-servers; and the fault kinds that need more than the defaults: a full spool
//! (`block`, and `drop_oldest` with the drops matched against what is missing), a private
//! PostgreSQL crashed and started again, the R3 stream's leader killed in a cluster of
//! three nats-servers (2.9 and 2.1x), and a full tmpfs under `state_dir` (root only).
//! Each seed replays alone with `scripts/torture --seed S --big-tx 2000 --no-infra`
//! (the infrastructure seeds without `--no-infra`); `--seeds <SEEDS> --describe` prints
//! their plans.
//!
//! It runs the real `lockstep` built next to it (`cargo build -p lockstep`, as
//! scripts/test does) or `LOCKSTEP_BIN`.

use std::process::Command;

/// Chosen with `--describe --no-infra` to cover the families and faults above; about 1.5 minutes
/// on 2 cores. The combinations of the bugs below (kill -9 with copytruncate; `create` +
/// `compress` without `delaycompress`) are covered by their own seeds.
/// Tail: 37, 251, 227, 76; PostgreSQL: 323 (trigger keys, debounce), 11 (trigger rows),
/// 27 (poll full), 594 (poll cursor); MariaDB: 1080 (trigger rows, limits), 405 (trigger
/// keys, debounce, limits), 489 (poll cursor, limits); SQLite: 70 (trigger keys, big
/// transaction and its update, limits), 254 (trigger rows, debounce, big, limits), 1145
/// (poll cursor, big and update, limits); two sources: 534 (MariaDB trigger + trigger),
/// 613 (SQLite trigger + poll, poll limits), 1331 (PostgreSQL trigger + trigger,
/// limits), 1412 (MariaDB trigger + poll full, trigger limits); tail from seed 10,000
/// on: 10027 (debounce, a second tail source on the directory), 10009 (debounce, the
/// broker killed).
const SEEDS: &str =
    "37,251,227,76,323,11,27,594,1080,405,489,70,254,1145,534,613,1331,1412,10027,10009";

/// Run with `--no-infra`: the plans they had before the small spool, private
/// PostgreSQL, cluster and tmpfs existed.
///
/// The rows of the big transaction in CI (100,000 in long runs).
const BIG_TX: &str = "2000";

/// The fault kinds that need more than the defaults, each at least once (about 2
/// minutes): 634 — trigger keys on a private PostgreSQL, a 96 KiB spool that blocks and
/// fills, the database crashed and started, the leader of the R3 stream killed in a
/// cluster of three nats-server 2.1x; 569 — tail, a 256 KiB spool with `drop_oldest`
/// (thousands of events dropped, matched against what is missing) and a 9 MiB tmpfs
/// under `state_dir` filled; 1238 — poll over ODBC on a private PostgreSQL crashed and
/// started, the leader killed in a cluster of nats-server 2.9.
const INFRA_SEEDS: &str = "634,569,1238";

fn torture(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_lockstep-torture"))
        .args(args)
        .output()
        .expect("run lockstep-torture");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{out}");
    (o.status.success(), out)
}

#[test]
fn fixed_seeds_lose_double_and_reorder_nothing() {
    let (ok, out) = torture(&["--seeds", SEEDS, "--big-tx", BIG_TX, "--no-infra"]);
    assert!(ok, "torture seeds failed:\n{out}");
}

#[test]
fn full_spool_database_restart_leader_kill_and_full_disk_lose_nothing() {
    let (ok, out) = torture(&["--seeds", INFRA_SEEDS]);
    assert!(ok, "torture seeds failed:\n{out}");
    for kind in ["spool-full", "db-restart", "leader-kill9", "disk-full"] {
        assert!(
            out.contains(&format!("\"{kind}\"")),
            "no {kind} fault ran:\n{out}"
        );
    }
    // The drop_oldest scenario dropped events (and its check matched them).
    let dropped = out
        .lines()
        .filter_map(|l| {
            l.split(" events, ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(dropped > 0, "no spool dropped anything:\n{out}");
}

/// Kills aimed at each phase (seeds from 20,000 on; with their infrastructure): 20048
/// capture (tail), 20017 checkpoint (tail, copytruncate), 20018 spool-append (tail csv,
/// a torn frame), 20013 snapshot (poll on PostgreSQL), 20041 scan-swap (poll on
/// SQLite), 20191 trigger-delete (trigger on PostgreSQL), 20076 spool-drain (trigger on
/// MariaDB). About 2 minutes. Whether a point is reached before its step depends on
/// timing (if not, the agent is killed -9 at the step): the plans aim them, the run
/// does not assert that they were hit.
const AIMED_SEEDS: &str = "20048,20017,20018,20013,20041,20191,20076";

#[test]
fn kills_aimed_at_each_phase_lose_double_and_reorder_nothing() {
    let (ok, out) = torture(&["--seeds", AIMED_SEEDS, "--big-tx", BIG_TX]);
    assert!(ok, "torture seeds failed:\n{out}");
    for point in [
        "capture",
        "checkpoint",
        "spool-append",
        "snapshot",
        "scan-swap",
        "trigger-delete",
        "spool-drain",
    ] {
        assert!(
            out.contains(&format!("\"kill9@{point}\"")),
            "no kill aimed at {point}:\n{out}"
        );
    }
    // Whether each point is reached before its step depends on timing; that the points
    // are reachable at all does not.
    assert!(
        out.contains("reached at step") || out.contains("reached during step"),
        "no crash point was reached:\n{out}"
    );
}

/// Runs `seed` `times` times (the bugs below depended on timing: the same plan does not
/// always hit them; each was run 10 times and more after its fix).
fn repeat(seed: u64, times: usize) -> (bool, String) {
    let seeds = vec![seed.to_string(); times].join(",");
    torture(&["--seeds", &seeds, "--no-infra"])
}

/// Fixed (torture seed 153, about 1 run in 4 before): tail, jsonl, `copytruncate`, the
/// agent killed -9 less than a checkpoint interval (200 ms) after it began a new
/// generation of the live file: the checkpoint still said "generation 1, offset 0, no
/// head" although events of it were acknowledged, and copytruncate ran while the agent
/// was down. The copy was read whole under its own inode's ids, so records already in
/// the stream were stored again. Now the oldest copy made while stopped of such a file
/// is that generation, read under the live file's ids; and the copy of the generation
/// before it (made within the clock tick of the last checkpoint write, so it looked
/// "modified since the stop") is told apart by the previous generation's head and
/// length, which the checkpoint keeps. Under load the checkpoint may lag a whole
/// generation: the next copy is then read under the live file's ids as well.
#[test]
fn seed_153_kill9_copytruncate_reads_a_sent_generation_again_under_new_ids() {
    let (ok, out) = repeat(153, 3);
    assert!(ok, "{out}");
}

/// Fixed (torture seed 2027, 3 runs in 10 before): tail, csv, `create` + `compress`
/// without `delaycompress`, rotations in quick succession, the broker down. A rotated
/// file read to its end and dropped was opened again under its rotated name (before
/// gzip unlinked it) and, its checkpoint entry retired, read again as a new generation.
/// The birth time in the checkpoint tells the same file seen again (it goes on where it
/// was); a file dropped whose acks are still due is found in `retiring` the same way.
#[test]
fn seed_2027_create_compress_rereads_a_retired_file_as_a_new_generation() {
    let (ok, out) = repeat(2027, 3);
    assert!(ok, "{out}");
}

/// Fixed (torture seed 3020, seen once in 7 runs before): tail, csv, `copytruncate`. The
/// agent followed the live file at byte 0 with no head (empty at its first look); 20
/// records were written and copytruncated before the agent read them, and were lost:
/// the file never looked truncated and the copy could not be found by first bytes never
/// read. Now a change of such a file makes the agent look next to it for copies (a
/// rotated name, or its `.gz`) born since it last saw the file empty.
#[test]
fn seed_3020_copytruncate_before_the_first_read_loses_the_records() {
    let (ok, out) = repeat(3020, 3);
    assert!(ok, "{out}");
}

/// Fixed (torture seed 4052, 1 run in 2 before): tail, jsonl, `create` + `compress`
/// without `delaycompress`, truncation, kill -9, SIGTERMs, the broker killed, the link
/// stalled: records of older files stored after newer ones of the same keys. At the
/// start after the kill, the rest of a file replaced by a new file in its inode number
/// was read before the rests of older files recovered from their `.gz`, and those rests
/// were read in the order they were decompressed; now all are read by the time their
/// rotation was last written. At run time, a file dropped while its acks were due
/// whose inode a new file took was read again from its acknowledged offset. Records
/// lost (1 run in 10 under load): that new file was its inode number's next generation
/// only in memory, so once it was rotated and compressed before the kill nothing found
/// it at the start; the checkpoint now keeps its head (`next`).
#[test]
fn seed_4052_create_compress_truncate_restarts_lose_records() {
    let (ok, out) = repeat(4052, 3);
    assert!(ok, "{out}");
}

/// Fixed (torture seed 4066, failed 2 runs in 5 before; 5 of 5 pass after): tail, `create` + `compress` +
/// `delaycompress`, the link stalled. `lockstep_events_published_total` counted the
/// acknowledgements of re-sent copies that JetStream dropped as duplicates (9,441
/// against 9,171 messages stored); they are now `lockstep_events_repeated_total`.
#[test]
fn seed_4066_a_stalled_link_counts_re_sent_copies_as_repeated() {
    let (ok, out) = repeat(4066, 2);
    assert!(ok, "{out}");
}

/// Fixed (torture seed 10107, lost a delete 1 run in 1 before; passes 4 of 4 after):
/// tail, csv, `debounce`, `create` + `compress` + `delaycompress`, the link stalled. A
/// new live file took the inode number of a rotated file read to its end whose events
/// still awaited their acks; it was taken for "a new file in the inode of a deleted
/// one" and the old file's unacknowledged part read again from its `.gz`. The re-read
/// update of key 35 reached the debouncer after the key's newer delete and merged it
/// away. Now a new generation starts, nothing is read twice.
#[test]
fn seed_10107_a_file_in_the_inode_of_one_awaiting_acks_is_not_read_twice() {
    let (ok, out) = repeat(10107, 2);
    assert!(ok, "{out}");
}

/// Seed 20042 (tail csv, copytruncate, two concurrent writers, a kill aimed at a torn
/// spool frame, a cluster's leader killed, a full tmpfs): events of a file became
/// durable before the checkpoint knew its first bytes; the next start read the copy
/// again under its own ids (doubles) and the refilled live file under the old ids
/// (dropped as duplicates: lost records). e2e:
/// `rotation::a_crash_at_the_first_batch_leaves_a_checkpoint_that_knows_what_was_read`.
#[test]
fn seed_20042_events_durable_before_the_checkpoint_knew_their_file() {
    let (ok, out) = torture(&["--seeds", "20042,20042"]);
    assert!(ok, "{out}");
}

/// Fixed (torture seed 145, 3 runs in 3 before): tail, jsonl, `create` + `compress`
/// without `delaycompress`, `state_dir` on an 11 MiB tmpfs filled at step 0, kill -9.
/// The rests of files rotated and compressed meanwhile could not be decompressed into
/// `state/checkpoints` (ENOSPC, and a 64 MiB reserve an 11 MiB file system can never
/// keep free), and were given up: a new file in the checkpointed one's inode number was
/// read again from 0 without its rest, and the `.gz` rotations written while stopped
/// were skipped (374 records lost, no loss reported). Now such a `.gz` is waited for
/// and tried again, newer files waiting with it, and the reserve is an eighth of a small
/// file system. Then the checkpoint itself, unwritable on the full disk, did not know
/// the files followed since: their `.gz` were read whole under other ids (75 records
/// doubled); it is now written into a spare whose blocks are allocated.
#[test]
fn seed_145_full_disk_while_decompressing_a_rotation_loses_nothing() {
    // With its tmpfs (infrastructure): without it the disk is never full.
    let (ok, out) = torture(&["--seeds", "145,145,145"]);
    assert!(ok, "{out}");
}

/// Fixed (torture seed 5000, 3 runs in 3 before; with its small spool and tmpfs): tail,
/// csv, `copytruncate`, bursts of 200–800 records a step, a 96 KiB spool that blocks
/// during a long broker outage (logrotate copytruncates the live file again and again
/// meanwhile), a full tmpfs, kill -9 and SIGTERM. Before the kill the agent had read
/// generations 5 and 6 of the live file after the files rotated away while it was
/// stopped (still being finished, their acks due); the checkpoint knew the newest
/// generation only, and at the restart the copies of those generations were read whole
/// under new ids or after newer events: 431 events stored after newer events of their
/// keys. Now their copies are found by their heads and read under their ids, and they
/// are read in time order together with the rotated files being finished.
#[test]
fn seed_5000_copytruncates_while_the_spool_blocks_are_stored_out_of_order() {
    let (ok, out) = torture(&["--seeds", "5000,5000"]);
    assert!(ok, "{out}");
}

/// Fixed (torture seeds 10214 and 10242, each 3 runs in 3 before): tail,
/// `copytruncate`, `debounce`, kill -9 (10242: also SIGTERM, the broker killed, the link
/// dropped); records lost and keys on old values after the restart. The file was
/// copytruncated several times before the acks of the checkpoint's generation came. The
/// checkpoint kept the identity of the newest generation only: it reached the middle one
/// without a head, and at the start its rest (10242: generation 3, checkpointed at byte
/// 28,620, in `changes.log.3`) was not found; the copies of generations read before the
/// kill and made before it (10214: `.12` … `.10`) were never read, and the copy of the
/// one being read (`.9`) was read under the id of the generation after the checkpoint's.
/// Now every newer generation's identity is kept and written (`between`, `next`), and at
/// a start their copies are found by their heads and read under their own generations.
/// Then, with debounce: a change sent on its own before the kill came back with the same
/// id (dropped as a duplicate) after the earlier changes of its key, which had left
/// merged, were stored again: read again after a restart, changes now leave with `+1`.
#[test]
fn seeds_10214_10242_copytruncate_debounce_kill9() {
    for seed in [10214, 10242] {
        let (ok, out) = repeat(seed, 2);
        assert!(ok, "{out}");
    }
}

/// Fixed (torture seeds 21031 and 21033, each failing on every run before): tail,
/// `copytruncate` with a glob that matches the copies (`*.log*`; 21031 also `compress` +
/// `delaycompress`, a spool that blocks, SIGTERM; 21033 three writers, kill -9 at the 10th
/// batch). The file was copytruncated again before the acks of the checkpoint's generation
/// came; each copy held nothing the agent had not read from the live file, so it was
/// followed from its end, under its own inode. At the start those copies were known files
/// and not taken as the copies of the generations the checkpoint listed (`between`,
/// `next`): whole generations lost (21031: 16 records of generation 19, in
/// `changes.log.1`; 21033: 205 records of generations 1 and 2, in `.2` and `.1`). Now a
/// copy followed from its end is still looked at as its generation's copy.
#[test]
fn seeds_21031_21033_copies_in_the_globs_of_unacknowledged_generations() {
    let (ok, out) = torture(&["--seeds", "21031,21033"]);
    assert!(ok, "{out}");
}

/// Found at the end of the 60-minute run of the session that added aimed kills (every
/// replay failed): tail csv, `create` + `compress` + `delaycompress`, a 96 KiB spool with
/// `drop_oldest`, the state tmpfs full at step 0, a kill at the spool's drain. The `.gz`
/// rotations written while stopped waited for room, saved by name; logrotate renamed
/// them before there was room, and the retry opened whatever had the name then (151
/// records doubled, 406 lost). They are found again by inode and time now.
#[test]
fn seed_21159_gz_rotations_waiting_for_room_are_found_again_by_identity() {
    let (ok, out) = torture(&["--seeds", "21159"]);
    assert!(ok, "{out}");
}

/// Found by the 60-minute run of the session that closed seed 21159 (every replay
/// failed): tail jsonl, `create` + `compress` + `delaycompress`, SIGTERM twice. While
/// stopped, the followed file was rotated and compressed and the next file, created in
/// the inode number the first one freed, was rotated too and left plain: at the start
/// the checkpoint's entry of that number was taken for it, and its 7 records were never
/// read. Now a rotated file whose birth time differs from the entry's is read whole
/// under ids of its own (e2e: `rotation::a_file_in_the_checkpointed_files_inode_number_…`).
#[test]
fn seed_22135_a_file_rotated_while_stopped_in_the_checkpointed_files_inode_number() {
    let (ok, out) = torture(&["--seeds", "22135"]);
    assert!(ok, "{out}");
}

/// Found by a 20-minute run at the end of the session that reverted the first fix of
/// seed 22135 (fails about one replay in five under load): tail jsonl, `copytruncate` +
/// `dateext` + `compress` + `delaycompress`, two sources, a 96 KiB spool with
/// `drop_oldest` filled, kill -9, the broker killed, a proxy drop. The file was
/// copytruncated twice while the source waited on the full spool; the rest of the
/// generation it was reading was in a `.gz`, and the copies made after it were looked
/// for only after a plain rest, and only plain ones: the generation between (about
/// 1,000 records) was never read. Now `.gz` rests and `.gz` copies count too.
#[test]
fn seed_24048_copies_after_a_rest_in_a_gz_are_read() {
    let (ok, out) = torture(&["--seeds", "24048"]);
    assert!(ok, "{out}");
}

/// Found by the 60-minute run from seed 26000 (stopped after 21 minutes), on the final
/// code of that session; 8 replays passed (about 10 s each). trigger-sqlite, rows mode,
/// debounce, a 2,731-row transaction and two rows at the size limit, a 17 MiB tmpfs for
/// `state_dir` filled at step 4, a kill -9 at step 2. The source started again, logged
/// "draining the capture table", and did nothing more: "has not moved for 120 s", no
/// event sent, and SIGTERM did not stop the agent within 15 s. Open, not diagnosed (see
/// docs/testing.md).
#[test]
#[ignore = "open bug, not yet diagnosed: a trigger-sqlite source stuck after a kill -9 and a full state tmpfs (seed 26018)"]
fn seed_26018_a_trigger_sqlite_source_stuck_after_a_kill_and_a_full_disk() {
    let (ok, out) = torture(&["--seeds", "26018,26018,26018"]);
    assert!(ok, "{out}");
}
