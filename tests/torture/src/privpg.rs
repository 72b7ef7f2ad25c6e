//! A PostgreSQL cluster of the scenario's own (initdb + pg_ctl in `<dir>/pg`, on a free
//! port, with a database `test`), so that it can be crashed (`pg_ctl -m immediate
//! stop`) and started again under the agent without disturbing the shared server. Run
//! as the `postgres` user when the driver runs as root (as tests/e2e's `PrivatePg`).
//! Stopped when dropped, on every path.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::disk::is_root as as_root;
use crate::procs::Res;

pub struct PrivPg {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    up: bool,
}

impl PrivPg {
    /// initdb in `<dir>/pg`, started on `port`, with a database `test`.
    pub fn start(dir: &Path, port: u16) -> Res<PrivPg> {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("PostgreSQL server binaries in /usr/lib/postgresql: {e}"))?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("pg_ctl").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().ok_or("no pg_ctl in /usr/lib/postgresql/*/bin")?;
        let pg_dir = dir.join("pg");
        std::fs::create_dir_all(&pg_dir).map_err(|e| format!("{}: {e}", pg_dir.display()))?;
        if as_root() {
            // The scenario directory (0700, root's) must be passable for `postgres`.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
            let id = |flag: &str| -> Res<u32> {
                let o = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .map_err(|e| format!("id: {e}"))?;
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse()
                    .map_err(|_| "no user postgres".to_owned())
            };
            std::os::unix::fs::chown(&pg_dir, Some(id("-u")?), Some(id("-g")?))
                .map_err(|e| format!("chown {}: {e}", pg_dir.display()))?;
        }
        let mut pg = PrivPg {
            bin,
            dir: pg_dir,
            port,
            up: false,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        pg.up()?;
        let o = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-X", "-q", "-c", "CREATE DATABASE test"])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "CREATE DATABASE test: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// A server tool, run as `postgres` when the driver runs as root.
    fn tool(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Res<()> {
        let o = self
            .tool(tool)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    }

    pub fn up(&mut self) -> Res<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        )?;
        self.up = true;
        Ok(())
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Stopped the way a crash stops it (no checkpoint, connections cut).
    pub fn crash(&mut self) -> Res<()> {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])?;
        self.up = false;
        Ok(())
    }
}

impl Drop for PrivPg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}
