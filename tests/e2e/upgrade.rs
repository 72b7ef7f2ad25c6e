//! Upgrades (issue 17, item 8): the current binary started on a state_dir written by the
//! released 0.1.0 reads it all, says what it migrated, and loses and doubles nothing.
//!
//! The fixture, `tests/fixtures/state-0.1.0/state.tar.gz`, was made by
//! `scripts/make-upgrade-fixture` with the 0.1.0 binary (commit c3bf64c): a tail
//! checkpoint short of its file's end, a spool of `LSF1` frames (snapshot rows spooled
//! while the broker was away), a poll baseline with 4 changes pending, and a snapshot
//! checkpoint in the middle of its table. Its database side (schema `upgrade010` of the
//! local PostgreSQL's `test`) is made again here from the same SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/state-0.1.0")
        .join(name)
}

fn psql_file(path: &Path) {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-X",
            "-q",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-f"])
        .arg(path)
        .output()
        .expect("psql");
    assert!(
        o.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The host's change files stay where they are across an upgrade; unpacking the fixture
/// gives them a new directory and inode. So the copy's device, inode and path go where
/// the old ones were in the tail checkpoint — nothing else of it changes.
fn relocate_tail_checkpoint(state: &Path, file: &Path) {
    let cp = state.join("checkpoints/files.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cp).unwrap()).unwrap();
    let m = std::fs::metadata(file).unwrap();
    let files = v["files"].as_array_mut().expect("0.1.0 checkpoint: files");
    assert_eq!(files.len(), 1, "{v}");
    files[0]["dev"] = m.dev().into();
    files[0]["ino"] = m.ino().into();
    files[0]["path"] = file.display().to_string().into();
    std::fs::write(&cp, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[tokio::test]
async fn a_state_dir_of_0_1_0_is_read_and_nothing_is_lost_or_doubled() {
    let w = World::new();
    let o = Command::new("tar")
        .arg("-xzf")
        .arg(fixture("state.tar.gz"))
        .arg("-C")
        .arg(w.dir())
        .args(["state", "logs", "expect.json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let state = w.dir().join("state");
    let app_log = w.logs().join("app.log");
    relocate_tail_checkpoint(&state, &app_log);

    // What the old agent had done: the tail's checkpointed offset, the snapshot's last
    // acknowledged key, and (by its own `spool export`) the rows it spooled.
    let expect: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.dir().join("expect.json")).unwrap()).unwrap();
    let spooled = |source: &str| -> Vec<i64> {
        expect["spooled"][source]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_i64().unwrap()).collect())
            .unwrap_or_default()
    };
    let tail_cp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("checkpoints/files.json")).unwrap())
            .unwrap();
    let offset = tail_cp["files"][0]["offset"].as_u64().unwrap() as usize;
    let text = std::fs::read_to_string(&app_log).unwrap();
    assert!(
        offset > 0 && offset < text.len(),
        "the fixture's tail checkpoint is mid-file"
    );
    let id_of = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let tail_after: Vec<i64> = text[offset..].lines().map(id_of).collect();
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot/permits.json")).unwrap())
            .unwrap();
    assert!(
        snap["finished_ms"].is_null(),
        "the fixture's snapshot is mid-table: {snap}"
    );
    let after: serde_json::Value =
        serde_json::from_str(snap["after"].as_str().expect("0.1.0: after is a row")).unwrap();
    let snap_after = after["id"].as_i64().unwrap();
    let rows: i64 = 50_000;
    assert!(snap_after > 0 && snap_after < rows, "{snap}");

    // The database as the old agent left it, and the triggers of this release (the
    // upgrade procedure in docs/operations.md).
    psql_file(&fixture("tables.sql"));
    psql_file(&fixture("changes.sql"));
    let permits = "[[source]]\nname = \"permits\"\nkind = \"trigger\"\n\
        postgres = \"host=127.0.0.1 user=postgres dbname=test options='-c search_path=upgrade010'\"\n\
        tables = [\"permits\"]\ninterval = \"200ms\"\n";
    let ledger = "[[source]]\nname = \"ledger\"\nkind = \"poll\"\n\
        odbc = \"DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;PORT=5432;DATABASE=test;UID=postgres;ConnSettings=SET search_path TO upgrade010\"\n\
        table = \"ledger\"\nkey = [\"id\"]\ninterval = \"300ms\"\n";
    let files = format!(
        "[[source]]\nname = \"files\"\nkind = \"tail\"\npaths = [\"{}/*.log\"]\n\
         stat_interval = \"200ms\"\ntable = \"t\"\nkey = [\"id\"]\n",
        w.logs().display()
    );
    let cfg = w.config_with(&format!("{files}\n{ledger}\n{permits}"));
    let (code, out, err) = lockstep(&[
        "triggers",
        "install",
        "--source",
        "permits",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "triggers install: {out}{err}");
    let waiting = w.spool_waiting(&cfg);
    let spooled_total: usize = expect["spooled"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();
    assert!(waiting > 0, "the fixture's spool holds events");
    assert_eq!(
        waiting, spooled_total as u64,
        "the new binary counts the 0.1.0 spool as 0.1.0 did"
    );

    let mut agent = w.agent(&cfg);
    // Done: the spool drained, the snapshot finished, the poll's pending changes sent
    // and its baseline swapped, the tail at the end of its file.
    let progress = state.join("snapshot/permits.json");
    let pending = state.join("poll/ledger/pending.json");
    wait_for(
        "the snapshot to finish and the poll's pending changes to be sent",
        Duration::from_secs(180),
        || {
            std::fs::read(&progress)
                .ok()
                .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
                .is_some_and(|p| p["finished_ms"].is_i64())
                && !pending.exists()
        },
    )
    .await;
    // Snapshot rows: those spooled (read before the checkpoint moved past them) and
    // every row after the checkpoint.
    let want_snap: BTreeSet<i64> = spooled("permits")
        .into_iter()
        .chain(snap_after + 1..=rows)
        .collect();
    let expected = tail_after.len() as u64 + 4 + want_snap.len() as u64;
    w.wait_count(expected, Duration::from_secs(120)).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    assert_eq!(w.spool_waiting(&cfg), 0, "the spool drained");

    let msgs = w.messages().await;
    let mut ids = BTreeSet::new();
    let mut by_source: BTreeMap<String, Vec<&Msg>> = BTreeMap::new();
    for m in &msgs {
        assert!(ids.insert(m.id.clone()), "duplicate Nats-Msg-Id {}", m.id);
        let name = m.json["source"]["name"].as_str().unwrap().to_owned();
        by_source.entry(name).or_default().push(m);
    }

    // The tail resumed at its offset: every line after it once, in order, none before.
    let tail: Vec<i64> = by_source["files"]
        .iter()
        .map(|m| m.field("id").as_i64().unwrap())
        .collect();
    assert_eq!(tail, tail_after, "the tail resumes at the 0.1.0 checkpoint");

    // The poll baseline was used: only the 4 pending changes, not the table again.
    let mut poll: Vec<(String, i64)> = by_source["ledger"]
        .iter()
        .map(|m| {
            (
                m.json["op"].as_str().unwrap().to_owned(),
                // A poll delete names the key only.
                m.field("id")
                    .as_i64()
                    .or_else(|| m.json["key"]["id"].as_i64())
                    .unwrap_or_else(|| panic!("a poll event: {}", m.json)),
            )
        })
        .collect();
    poll.sort_by_key(|p| p.1);
    let want: Vec<(String, i64)> = [("u", 1), ("u", 2), ("d", 3), ("c", 21)]
        .iter()
        .map(|(o, i)| (o.to_string(), *i))
        .collect();
    assert_eq!(poll, want, "the poll's pending changes, once");

    // The snapshot resumed after its checkpoint: each later row once, none before it.
    let snap_ids: Vec<i64> = by_source["permits"]
        .iter()
        .map(|m| {
            assert_eq!(m.json["op"], "r", "{}", m.json);
            m.field("id").as_i64().unwrap()
        })
        .collect();
    let got: BTreeSet<i64> = snap_ids.iter().copied().collect();
    if got.len() != snap_ids.len() {
        let mut seen = BTreeMap::new();
        for m in &by_source["permits"] {
            seen.entry(m.field("id").as_i64().unwrap())
                .or_insert_with(Vec::new)
                .push(m.id.clone());
        }
        let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).take(3).collect();
        panic!(
            "{} snapshot rows sent twice, as: {twice:?}",
            snap_ids.len() - got.len()
        );
    }
    assert_eq!(
        got.first().copied(),
        want_snap.first().copied(),
        "the snapshot resumes after row {snap_after}, its spooled rows aside"
    );
    assert_eq!(
        got, want_snap,
        "the spooled rows and every row after the checkpoint"
    );
    assert_eq!(msgs.len() as u64, expected);

    // And it says what it migrated.
    let log = agent_log(&w);
    let migrated: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("was written by an older lockstep"))
        .collect();
    assert!(
        migrated.iter().any(|l| l.contains("the tail checkpoint"))
            && migrated.iter().any(|l| l.contains("the spool")),
        "lines say what was migrated: {migrated:?}"
    );
    eprintln!("{}", migrated.join("\n"));
}
