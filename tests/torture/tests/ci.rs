//! The CI instance of the torture suite: a fixed list of seeds, run by the normal test
//! command, that covers every source family of this slice (tail jsonl and csv with
//! logrotate's create and copytruncate, dateext, compress, truncation and late files;
//! trigger on PostgreSQL in keys and rows mode, with and without debounce; poll over
//! ODBC, full and cursor) and every fault kind (kill -9 and SIGTERM of lockstep, the
//! broker killed -9 and restarted, the proxy dropping and stalling the agent's
//! connection), against both nats-servers. Each seed replays alone with
//! `scripts/torture --seed S`; `--seeds <SEEDS> --describe` prints their plans.
//!
//! It runs the real `lockstep` built next to it (`cargo build -p lockstep`, as
//! scripts/test does) or `LOCKSTEP_BIN`.

use std::process::Command;

/// Chosen with `--describe` to cover the families and faults above; about 2 minutes
/// on 2 cores.
const SEEDS: &str = "80,264,77,383,220,177,361,2,12,26,29,35";

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
    let (ok, out) = torture(&["--seeds", SEEDS]);
    assert!(ok, "torture seeds failed:\n{out}");
}
